//! What can go wrong while driving the VF: [`DriverError`] for every public operation, with
//! [`ProtocolError`] for a PF that answers something the driver cannot use and [`WaitOp`] for
//! what a timeout was waiting for.

use std::fmt;
use std::time::Duration;

use emudev_dma::DmaAccessError;
use emudev_vfio_user::client::ClientError;
use thiserror::Error;

use super::BringUpStep;
use crate::spec::virtchnl::{VirtchnlOp, VirtchnlStatus};
use crate::spec::DecodeError;

/// What a [`DriverError::Timeout`] was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitOp {
    /// `VFGEN_RSTAT` to read COMPLETED or VFACTIVE.
    ResetDone,
    /// `ARQLEN.ENABLE` to clear after RESET_VF (the PF starting the reset).
    ResetStart,
    /// The ATQ descriptor of a command to come back with `DD`.
    Completion(VirtchnlOp),
    /// The PF's reply to a command on the ARQ.
    Reply(VirtchnlOp),
    /// The `VIRTCHNL_EVENT_LINK_CHANGE` event after ENABLE_QUEUES.
    LinkChange,
}

impl fmt::Display for WaitOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitOp::ResetDone => f.write_str("reset done (VFGEN_RSTAT)"),
            WaitOp::ResetStart => f.write_str("reset start (ARQLEN enable clear)"),
            WaitOp::Completion(op) => write!(f, "ATQ completion of {op:?}"),
            WaitOp::Reply(op) => write!(f, "reply to {op:?}"),
            WaitOp::LinkChange => f.write_str("LINK_CHANGE event"),
        }
    }
}

/// A PF answer the driver cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The reply body does not decode as the op's reply structure.
    #[error("reply to {op:?} does not decode: {source}")]
    BadReply {
        /// The op.
        op: VirtchnlOp,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The PF's virtchnl version is not 1.1 (DPDK 21.02 needs exactly 1.1).
    #[error("PF speaks virtchnl {major}.{minor}, the driver needs 1.1")]
    Version {
        /// Major version the PF replied with.
        major: u32,
        /// Minor version.
        minor: u32,
    },
    /// GET_VF_RESOURCES listed no VSI of type SR-IOV ("no LAN VSI found").
    #[error("GET_VF_RESOURCES lists no LAN (SR-IOV) VSI")]
    NoLanVsi,
    /// A reply carried a status value virtchnl does not define.
    #[error("reply to {op:?} carries an undefined status {raw}")]
    UnknownStatus {
        /// The op.
        op: VirtchnlOp,
        /// The raw `cookie_low`.
        raw: i32,
    },
    /// The PF completed the command's ATQ descriptor with `ERR`.
    #[error("ATQ descriptor of {op:?} completed with ERR, retval {retval}")]
    AtqError {
        /// The op.
        op: VirtchnlOp,
        /// The AQ return code (`spec::aq::rc`).
        retval: u16,
    },
    /// The PF's ARQ descriptor for the reply carries `ERR` (the reply did not fit, or could not
    /// be written).
    #[error("ARQ descriptor of the reply to {op:?} has ERR, retval {retval}")]
    ArqError {
        /// The op.
        op: VirtchnlOp,
        /// The AQ return code.
        retval: u16,
    },
    /// The admin queue stopped: `ATQLEN`/`ARQLEN` report an error bit (VFE, OVFL or CRIT).
    #[error("admin queue error: ATQLEN {atq_len:#010x}, ARQLEN {arq_len:#010x}")]
    AdminQueueFault {
        /// `ATQLEN` as read.
        atq_len: u32,
        /// `ARQLEN` as read.
        arq_len: u32,
    },
    /// `ATQBAL` did not read back what was written (the AQ init check of the shared code).
    #[error("ATQBAL reads {read:#x} after writing {written:#x}")]
    AtqBaseReadBack {
        /// Written.
        written: u32,
        /// Read back.
        read: u32,
    },
    /// The device has no MSI-X capability (the admin queue needs vector 0).
    #[error("the device has no MSI-X capability")]
    NoMsix,
    /// A register the driver needs does not exist for this queue id.
    #[error("queue {0} has no tail register")]
    NoTailRegister(u16),
}

/// Why a driver operation failed.
#[derive(Debug, Error)]
pub enum DriverError {
    /// Nothing came within the bound.
    #[error("timed out after {waited:?} waiting for {op}")]
    Timeout {
        /// What was awaited.
        op: WaitOp,
        /// How long.
        waited: Duration,
    },
    /// The PF answered the op with an error status.
    #[error("{op:?} refused by the PF: {status:?} ({})", status.raw())]
    Status {
        /// The op.
        op: VirtchnlOp,
        /// The status in the reply's `cookie_low`.
        status: VirtchnlStatus,
    },
    /// The vfio-user connection failed.
    #[error("vfio-user: {0}")]
    Transport(#[from] ClientError),
    /// The PF answered something unusable.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The driver's own DMA memory could not be accessed (a driver bug).
    #[error("driver memory: {0}")]
    Memory(#[from] DmaAccessError),
    /// The configuration cannot be turned into messages.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The op needs a capability the PF did not grant.
    #[error("{op:?} needs capability {cap:#x}, which the PF did not grant")]
    NotGranted {
        /// The op.
        op: VirtchnlOp,
        /// The capability bit (`spec::virtchnl::caps`).
        cap: u32,
    },
    /// The operation needs a state the driver is not in (e.g. stats before bring-up).
    #[error("{what}: the driver is {state}")]
    NotReady {
        /// The operation.
        what: &'static str,
        /// The state it found.
        state: &'static str,
    },
    /// A message does not fit the admin-queue buffer.
    #[error("{op:?}: message of {len} bytes exceeds the {max}-byte admin-queue buffer")]
    MessageTooLarge {
        /// The op.
        op: VirtchnlOp,
        /// Its length.
        len: usize,
        /// The buffer size.
        max: usize,
    },
    /// The step callback asked to stop.
    #[error("bring-up stopped by the caller after {after:?}")]
    Aborted {
        /// The last step done.
        after: BringUpStep,
    },
}

impl DriverError {
    /// The virtchnl status, for [`DriverError::Status`].
    pub fn status(&self) -> Option<VirtchnlStatus> {
        match self {
            DriverError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, DriverError::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_op_and_status() {
        let e = DriverError::Status {
            op: VirtchnlOp::ConfigVsiQueues,
            status: VirtchnlStatus::ErrParam,
        };
        let s = e.to_string();
        assert!(
            s.contains("ConfigVsiQueues") && s.contains("ErrParam") && s.contains("-5"),
            "{s}"
        );
        assert_eq!(e.status(), Some(VirtchnlStatus::ErrParam));
        assert!(!e.is_timeout());
        let t = DriverError::Timeout {
            op: WaitOp::Reply(VirtchnlOp::Version),
            waited: Duration::from_millis(5),
        };
        assert!(t.is_timeout());
        assert_eq!(t.status(), None);
        assert!(t.to_string().contains("reply to Version"), "{t}");
        assert!(WaitOp::LinkChange.to_string().contains("LINK_CHANGE"));
        let p = DriverError::from(ProtocolError::Version { major: 1, minor: 0 });
        assert!(p.to_string().contains("1.0"), "{p}");
    }
}
