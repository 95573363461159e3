/*
 * Finds near-duplicate images with the delg-gpu C library: every image's
 * global descriptor is compared with every other's, and each pair that is
 * similar enough is verified by matching local features with RANSAC.
 *
 *   near_duplicates (WEIGHTS.safetensors | --tiny) IMAGE IMAGE...
 *
 * --tiny uses a tiny model with random weights (meaningless features, for
 * trying the build); real use needs trained weights (README, "Getting
 * trained weights"). Build (docs/c-api.md):
 *
 *   cc -std=c99 -I capi/include capi/examples/near_duplicates.c \
 *      -L target/release -ldelg_gpu -Wl,-rpath,target/release -o near_duplicates
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delg_gpu.h"

/* A pair is a candidate when its global descriptors' cosine similarity
 * reaches this, and a near-duplicate when RANSAC verifies this many
 * keypoints. Starting points for trained weights; tune them on your
 * images. (With --tiny's random weights every pair looks alike.) */
#define MIN_SIMILARITY 0.90f
#define MIN_INLIERS 30

static float cosine_similarity(const delg_features *a, const delg_features *b) {
    /* Global descriptors are L2-normalised: the dot product is the cosine. */
    float dot = 0.0f;
    for (size_t i = 0; i < a->global_dim && i < b->global_dim; i++)
        dot += a->global[i] * b->global[i];
    return dot;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s (WEIGHTS.safetensors | --tiny) IMAGE IMAGE...\n", argv[0]);
        return 2;
    }
    printf("delg-gpu %s\n", delg_version());

    delg_extractor *extractor = NULL;
    delg_status status = strcmp(argv[1], "--tiny") == 0
                             ? delg_open_tiny_random(1, NULL, &extractor)
                             : delg_open(argv[1], NULL, &extractor);
    if (status != DELG_OK) {
        fprintf(stderr, "near_duplicates: %s\n", delg_last_error());
        return 1;
    }

    int count = argc - 2;
    char **paths = argv + 2;
    delg_features **features = calloc((size_t)count, sizeof *features);
    int exit_code = 0;
    for (int i = 0; i < count && exit_code == 0; i++) {
        if (delg_extract_file(extractor, paths[i], &features[i]) != DELG_OK) {
            fprintf(stderr, "near_duplicates: %s\n", delg_last_error());
            exit_code = 1;
        } else {
            printf("%s: %zu local features\n", paths[i], features[i]->num_local);
        }
    }

    int duplicates = 0;
    for (int i = 0; i < count && exit_code == 0; i++) {
        for (int j = i + 1; j < count && exit_code == 0; j++) {
            float similarity = cosine_similarity(features[i], features[j]);
            if (similarity < MIN_SIMILARITY)
                continue;
            delg_match_result match;
            if (delg_match(features[i], features[j], &match) != DELG_OK) {
                fprintf(stderr, "near_duplicates: %s\n", delg_last_error());
                exit_code = 1;
            } else if (match.inliers >= MIN_INLIERS) {
                printf("near-duplicates: %s %s (similarity %.3f, %zu of %zu matches verified)\n",
                       paths[i], paths[j], similarity, match.inliers, match.matches);
                duplicates++;
            }
        }
    }
    if (exit_code == 0)
        printf("near-duplicate pairs among %d images: %d\n", count, duplicates);

    for (int i = 0; i < count; i++)
        delg_features_free(features[i]);
    free(features);
    delg_close(extractor);
    return exit_code;
}
