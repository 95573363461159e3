/*
 * The C library seen from C (run by tests/c_programs.rs):
 *
 *   abi IMAGE.png IMAGE.rgb WIDTH HEIGHT NOT_AN_IMAGE
 *
 * IMAGE.rgb holds IMAGE.png's pixels as packed RGB bytes. Checks that an
 * in-memory buffer with padded rows gives the file's features, that an
 * image matched with itself verifies every keypoint with the identity,
 * and that every kind of bad call returns its status and a message.
 * Prints "abi: ok" when every check passed; otherwise exits 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delg_gpu.h"

static int failures = 0;

#define CHECK(condition, ...)                                         \
    do {                                                              \
        if (!(condition)) {                                           \
            fprintf(stderr, "abi.c:%d: %s: ", __LINE__, #condition); \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
            failures++;                                               \
        }                                                             \
    } while (0)

static int same_floats(const float *a, const float *b, size_t n) {
    return n == 0 || memcmp(a, b, n * sizeof(float)) == 0;
}

static unsigned char *read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (!file)
        return NULL;
    fseek(file, 0, SEEK_END);
    *size = (size_t)ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *bytes = malloc(*size);
    if (bytes && fread(bytes, 1, *size, file) != *size) {
        free(bytes);
        bytes = NULL;
    }
    fclose(file);
    return bytes;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s IMAGE.png IMAGE.rgb WIDTH HEIGHT NOT_AN_IMAGE\n", argv[0]);
        return 2;
    }
    const char *png = argv[1], *raw = argv[2], *corrupt = argv[5];
    uint32_t width = (uint32_t)atoi(argv[3]), height = (uint32_t)atoi(argv[4]);

    CHECK(strstr(delg_version(), "(commit ") != NULL, "version '%s'", delg_version());

    delg_extractor *extractor = NULL;
    delg_options options = {0};
    options.max_features = 60;
    delg_status status = delg_open_tiny_random(5, &options, &extractor);
    if (status != DELG_OK) {
        fprintf(stderr, "abi: delg_open_tiny_random: %s\n", delg_last_error());
        return 1;
    }

    /* A file and the same pixels from memory, rows padded by 5 bytes. */
    delg_features *from_file = NULL, *from_memory = NULL;
    status = delg_extract_file(extractor, png, &from_file);
    CHECK(status == DELG_OK, "%s", delg_last_error());
    size_t raw_size = 0;
    unsigned char *pixels = read_file(raw, &raw_size);
    CHECK(pixels && raw_size == (size_t)width * height * 3, "%s: %zu bytes", raw, raw_size);
    size_t stride = (size_t)width * 3 + 5;
    unsigned char *padded = malloc(stride * height);
    for (uint32_t y = 0; pixels && y < height; y++) {
        memcpy(padded + y * stride, pixels + (size_t)y * width * 3, (size_t)width * 3);
        memset(padded + y * stride + (size_t)width * 3, 0xEE, 5);
    }
    status = delg_extract_rgb(extractor, padded, width, height, stride, &from_memory);
    CHECK(status == DELG_OK, "%s", delg_last_error());

    if (from_file && from_memory) {
        const delg_features *f = from_file, *m = from_memory;
        CHECK(f->global_dim > 0 && f->global_dim == m->global_dim, "global %zu vs %zu",
              f->global_dim, m->global_dim);
        CHECK(f->num_local > 4 && f->num_local <= 60, "%zu keypoints", f->num_local);
        CHECK(f->num_local == m->num_local && f->local_dim == m->local_dim,
              "file %zu x %zu, memory %zu x %zu", f->num_local, f->local_dim, m->num_local,
              m->local_dim);
        if (f->num_local == m->num_local && f->local_dim == m->local_dim) {
            CHECK(same_floats(f->global, m->global, f->global_dim), "global descriptors differ");
            CHECK(same_floats(f->descriptors, m->descriptors, f->num_local * f->local_dim),
                  "local descriptors differ");
            CHECK(same_floats(f->locations, m->locations, 2 * f->num_local), "locations differ");
            CHECK(same_floats(f->scales, m->scales, f->num_local), "scales differ");
            CHECK(same_floats(f->attention, m->attention, f->num_local), "attention differs");
        }
        float norm = 0.0f;
        for (size_t i = 0; i < f->global_dim; i++)
            norm += f->global[i] * f->global[i];
        CHECK(fabsf(norm - 1.0f) < 1e-4f, "|global|^2 = %f", norm);
        for (size_t i = 0; i < f->num_local; i++) {
            float y = f->locations[2 * i], x = f->locations[2 * i + 1];
            CHECK(y >= 0 && y < (float)height && x >= 0 && x < (float)width,
                  "keypoint %zu at (%f, %f)", i, y, x);
        }

        /* An image against itself: every keypoint verifies, with the identity. */
        delg_match_result match;
        status = delg_match(f, m, &match);
        CHECK(status == DELG_OK, "%s", delg_last_error());
        CHECK(match.matches == f->num_local && match.inliers == f->num_local,
              "%zu matches, %zu inliers of %zu", match.matches, match.inliers, f->num_local);
        CHECK(match.has_transform, "no transform");
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++)
                CHECK(fabs(match.transform[r][c] - (r == c ? 1.0 : 0.0)) < 1e-6,
                      "transform[%d][%d] = %f", r, c, match.transform[r][c]);

        /* Zeroed settings are DELG's; a homography verifies them all too. */
        delg_match_params params = {0};
        delg_match_result with;
        status = delg_match_with(f, m, &params, &with);
        CHECK(status == DELG_OK && with.matches == match.matches && with.inliers == match.inliers,
              "%s: %zu matches, %zu inliers", delg_last_error(), with.matches, with.inliers);
        params.homography = true;
        status = delg_match_with(f, m, &params, &with);
        CHECK(status == DELG_OK && with.inliers == f->num_local, "%s: %zu inliers",
              delg_last_error(), with.inliers);
        params.residual_threshold = -1.0;
        status = delg_match_with(f, m, &params, &with);
        CHECK(status == DELG_ERROR_INVALID_ARGUMENT, "status %d", (int)status);
        CHECK(strstr(delg_last_error(), "params->residual_threshold") != NULL, "'%s'",
              delg_last_error());
    }

    /* Bad calls: a status, *out left NULL, and a message naming the problem. */
    delg_features *none = from_file;
    status = delg_extract_file(extractor, "/nonexistent/photo.jpg", &none);
    CHECK(status == DELG_ERROR_FILE && none == NULL, "status %d", (int)status);
    CHECK(strstr(delg_last_error(), "/nonexistent/photo.jpg") != NULL, "'%s'", delg_last_error());

    status = delg_extract_file(extractor, corrupt, &none);
    CHECK(status == DELG_ERROR_FILE, "status %d", (int)status);
    CHECK(strstr(delg_last_error(), corrupt) != NULL, "'%s'", delg_last_error());

    status = delg_extract_rgb(extractor, padded, width, height, (size_t)width * 3 - 1, &none);
    CHECK(status == DELG_ERROR_INVALID_ARGUMENT, "status %d", (int)status);
    CHECK(strstr(delg_last_error(), "stride") != NULL, "'%s'", delg_last_error());

    status = delg_extract_file(NULL, png, &none);
    CHECK(status == DELG_ERROR_NULL_ARGUMENT, "status %d", (int)status);
    CHECK(strcmp(delg_last_error(), "delg_extract_file: extractor is NULL") == 0, "'%s'",
          delg_last_error());
    status = delg_extract_file(extractor, png, NULL);
    CHECK(status == DELG_ERROR_NULL_ARGUMENT, "status %d", (int)status);

    delg_extractor *other = extractor;
    options.adapter = "no-such-adapter";
    status = delg_open_tiny_random(5, &options, &other);
    CHECK(status == DELG_ERROR_GPU && other == NULL, "status %d", (int)status);
    CHECK(strstr(delg_last_error(), "no-such-adapter") != NULL, "'%s'", delg_last_error());

    delg_features_free(from_file);
    delg_features_free(from_memory);
    delg_features_free(NULL);
    delg_close(extractor);
    delg_close(NULL);
    free(pixels);
    free(padded);
    if (failures > 0) {
        fprintf(stderr, "abi: %d checks failed\n", failures);
        return 1;
    }
    printf("abi: ok\n");
    return 0;
}
