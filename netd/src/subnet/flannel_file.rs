//! The subnet from a real flanneld on this node, which writes `subnet.env`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::info;

use super::{SubnetEnv, SubnetSource};

/// A real flanneld on this node writes `subnet.env`; we read it.
pub struct FlannelFile {
    path: PathBuf,
}

impl FlannelFile {
    pub fn new(path: impl Into<PathBuf>) -> FlannelFile {
        FlannelFile { path: path.into() }
    }
}

impl SubnetSource for FlannelFile {
    fn describe(&self) -> String {
        format!("flannel subnet.env at {}", self.path.display())
    }

    fn acquire(&mut self) -> Pin<Box<dyn Future<Output = Result<SubnetEnv>> + Send + '_>> {
        Box::pin(async move {
            let mut announced = false;
            loop {
                match tokio::fs::read_to_string(&self.path).await {
                    Ok(text) => return SubnetEnv::parse(&text, &self.path),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if !announced {
                            info!(path = %self.path.display(), "waiting for flanneld to write its subnet file");
                            announced = true;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot read {}", self.path.display()))
                    }
                }
            }
        })
    }
}
