//! Scratch folders for the integration tests: unique per process and call, and removed when
//! dropped, so that test runs leave nothing behind in the temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `<temp dir>/dllm-cache-<suite>-<pid>-<tag>-<n>`, removed with everything in it on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh folder, created empty when `create` is true and left absent otherwise (for
    /// callers that want to see the folder made by the code under test).
    pub fn new(suite: &str, tag: &str, create: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dllm-cache-{suite}-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if create {
            std::fs::create_dir_all(&dir).expect("create scratch dir");
        }
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
