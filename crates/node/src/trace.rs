//! `--trace FILE` for JavaScript: every vfio-user message of a server or client, decoded, as a
//! JSON line appended to the file ([`JsonLinesTracer::append`]) and labelled with the device
//! or port it belongs to (`"device": "emu_iavf0"`), so servers and clients of one process can
//! share a file.

use std::sync::Arc;

use emudev_vfio_user::trace::{JsonLinesTracer, TraceCreateError, Tracer};

use crate::error::{io_error, NativeError};

/// A tracer appending to `path`, labelled `label`; `ERR_VFU_<ERRNO>` when the file cannot be
/// opened.
pub(crate) fn append(path: &str, label: &str) -> Result<Arc<dyn Tracer>, NativeError> {
    let tracer = JsonLinesTracer::append(path).map_err(|e| match e {
        TraceCreateError::Open { source, .. } => io_error(&source, &format!("trace file {path}")),
    })?;
    Ok(Arc::new(tracer.with_field("device", label)))
}
