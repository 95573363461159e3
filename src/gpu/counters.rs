//! What the host does on the device's behalf: submissions, objects created,
//! bytes moved, and the CPU time spent recording and submitting. On a fast
//! GPU these costs, not the kernels, can decide throughput, so `bench extract`
//! reports them per image and the steady state must create nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct HostCounters {
    submissions: AtomicU64,
    submissions_overlapped: AtomicU64,
    /// Submissions whose results are on their way back (`PendingRead`s alive).
    unread: Arc<AtomicU64>,
    bind_groups: AtomicU64,
    buffers: AtomicU64,
    textures: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_read_back: AtomicU64,
    record_submit_cpu_ns: AtomicU64,
}

/// A snapshot of `HostCounters`; the difference of two is the work between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostWork {
    pub submissions: u64,
    /// Submissions made while an earlier one's results were still unread:
    /// the device got its next work before the host waited for the last.
    pub submissions_overlapped: u64,
    pub bind_groups: u64,
    /// Buffers created, readback staging and uniform blocks included.
    pub buffers: u64,
    pub textures: u64,
    pub bytes_uploaded: u64,
    pub bytes_read_back: u64,
    /// CPU time of the threads that recorded and submitted (their own
    /// clocks, so time waiting for the device or other processes is excluded).
    pub record_submit_cpu: Duration,
}

#[derive(Clone, Copy)]
pub(crate) enum Count {
    Submission,
    BindGroup,
    Buffer,
    Texture,
    Uploaded,
    ReadBack,
}

impl HostCounters {
    pub(crate) fn add(&self, what: Count, n: u64) {
        let field = match what {
            Count::Submission => &self.submissions,
            Count::BindGroup => &self.bind_groups,
            Count::Buffer => &self.buffers,
            Count::Texture => &self.textures,
            Count::Uploaded => &self.bytes_uploaded,
            Count::ReadBack => &self.bytes_read_back,
        };
        field.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a submission, as overlapped when results of an earlier one are unread.
    pub(crate) fn submitted(&self) {
        self.add(Count::Submission, 1);
        if self.unread.load(Ordering::Relaxed) > 0 {
            self.submissions_overlapped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a submission's results unread until the guard drops.
    pub(crate) fn read_started(&self) -> UnreadGuard {
        self.unread.fetch_add(1, Ordering::Relaxed);
        UnreadGuard(self.unread.clone())
    }

    /// Runs `f`, adding the calling thread's CPU time to the recording total.
    pub(crate) fn recording<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = thread_cpu_time();
        let out = f();
        if let (Some(a), Some(b)) = (start, thread_cpu_time()) {
            let ns = b.saturating_sub(a).as_nanos() as u64;
            self.record_submit_cpu_ns.fetch_add(ns, Ordering::Relaxed);
        }
        out
    }

    pub fn snapshot(&self) -> HostWork {
        let get = |f: &AtomicU64| f.load(Ordering::Relaxed);
        HostWork {
            submissions: get(&self.submissions),
            submissions_overlapped: get(&self.submissions_overlapped),
            bind_groups: get(&self.bind_groups),
            buffers: get(&self.buffers),
            textures: get(&self.textures),
            bytes_uploaded: get(&self.bytes_uploaded),
            bytes_read_back: get(&self.bytes_read_back),
            record_submit_cpu: Duration::from_nanos(get(&self.record_submit_cpu_ns)),
        }
    }
}

impl std::ops::Sub for HostWork {
    type Output = HostWork;
    fn sub(self, earlier: HostWork) -> HostWork {
        HostWork {
            submissions: self.submissions - earlier.submissions,
            submissions_overlapped: self.submissions_overlapped - earlier.submissions_overlapped,
            bind_groups: self.bind_groups - earlier.bind_groups,
            buffers: self.buffers - earlier.buffers,
            textures: self.textures - earlier.textures,
            bytes_uploaded: self.bytes_uploaded - earlier.bytes_uploaded,
            bytes_read_back: self.bytes_read_back - earlier.bytes_read_back,
            record_submit_cpu: self.record_submit_cpu - earlier.record_submit_cpu,
        }
    }
}

/// Held by a `PendingRead`: its submission counts as unread while it lives.
pub(crate) struct UnreadGuard(Arc<AtomicU64>);

impl Drop for UnreadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The calling thread's CPU time, where the OS exposes it.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes into the struct we pass.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        (rc == 0).then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `HostWork` divided over the images it served, as reports give it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct HostWorkPerImage {
    pub submissions: f64,
    /// Of which submitted before the previous one's results were read.
    pub submissions_overlapped: f64,
    pub bind_groups_created: f64,
    pub buffers_created: f64,
    pub textures_created: f64,
    pub mib_uploaded: f64,
    pub kib_read_back: f64,
    /// CPU milliseconds of recording and submitting (thread clocks).
    pub record_submit_cpu_ms: f64,
}

impl HostWork {
    pub fn per_image(&self, images: usize) -> HostWorkPerImage {
        let per = |n: u64| n as f64 / images.max(1) as f64;
        HostWorkPerImage {
            submissions: per(self.submissions),
            submissions_overlapped: per(self.submissions_overlapped),
            bind_groups_created: per(self.bind_groups),
            buffers_created: per(self.buffers),
            textures_created: per(self.textures),
            mib_uploaded: per(self.bytes_uploaded) / (1u64 << 20) as f64,
            kib_read_back: per(self.bytes_read_back) / 1024.0,
            record_submit_cpu_ms: self.record_submit_cpu.as_secs_f64() * 1e3 / images.max(1) as f64,
        }
    }
}
