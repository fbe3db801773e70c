//! The `backend=` value of an emulated VF's `--vdev` argument, and building the back-end it
//! names:
//!
//! | value | back-end |
//! |---|---|
//! | `loopback` | [`Loopback`] |
//! | `macswap` | [`MacSwap`] |
//! | `rxonly` | [`Sink`] |
//! | `txonly[:LEN]` | [`Generator::udp`] with frames of LEN bytes (default 64, 42..=9728) |
//! | `pair:<peer>` | one side of a [`Pair`](super::Pair), met through a [`PairRegistry`] |
//! | `pcap:<file>` | [`PcapBackend::create`]: what the client sends goes to `<file>` |
//! | `pcap-replay:<file>` | [`PcapBackend::replay`]: `<file>` is played into RX once |
//! | `channel` | [`ChannelBackend`]: frames to and from the application |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use super::basic::{CreateGeneratorError, GENERATOR_DEFAULT_LEN};
use super::channel::{ChannelBackend, ChannelPort, CreateChannelError, CHANNEL_DEFAULT_CAPACITY};
use super::pair::{ConnectPairError, PairRegistry, PairSide};
use super::pcap::{OpenPcapBackendError, PcapBackend};
use super::{Backend, Generator, Loopback, MacSwap, Sink};

/// A parsed `backend=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `loopback`.
    Loopback,
    /// `macswap`.
    MacSwap,
    /// `rxonly`.
    RxOnly,
    /// `txonly[:LEN]`.
    TxOnly {
        /// Frame length.
        len: usize,
    },
    /// `pair:<peer>`.
    Pair {
        /// The peer device's name.
        peer: String,
    },
    /// `pcap:<file>`.
    Pcap {
        /// The output file.
        path: PathBuf,
    },
    /// `pcap-replay:<file>`.
    PcapReplay {
        /// The input file.
        path: PathBuf,
    },
    /// `channel`.
    Channel,
}

/// Why a `backend=` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseBackendSpecError {
    /// Not a back-end this build knows.
    #[error("backend={0:?}: unknown back-end (expected loopback, macswap, rxonly, txonly[:LEN], pair:<peer>, pcap:<file>, pcap-replay:<file> or channel)")]
    Unknown(String),
    /// A back-end that needs an argument got none (or an empty one).
    #[error("backend={value:?}: {kind} needs {what}")]
    MissingArgument {
        /// The whole value.
        value: String,
        /// The back-end.
        kind: &'static str,
        /// What it needs.
        what: &'static str,
    },
    /// A back-end that takes no argument got one.
    #[error("backend={value:?}: {kind} takes no argument")]
    UnexpectedArgument {
        /// The whole value.
        value: String,
        /// The back-end.
        kind: &'static str,
    },
    /// `txonly:LEN` with a LEN that is not a number in range.
    #[error("backend={value:?}: txonly frame length must be a number in 42..=9728")]
    Length {
        /// The whole value.
        value: String,
    },
}

impl FromStr for BackendSpec {
    type Err = ParseBackendSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = match value.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (value, None),
        };
        let none = |kind: &'static str, spec: BackendSpec| match arg {
            None => Ok(spec),
            Some(_) => Err(ParseBackendSpecError::UnexpectedArgument {
                value: value.to_string(),
                kind,
            }),
        };
        let needs = |kind: &'static str, what: &'static str| match arg {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Err(ParseBackendSpecError::MissingArgument {
                value: value.to_string(),
                kind,
                what,
            }),
        };
        match kind {
            "loopback" => none("loopback", BackendSpec::Loopback),
            "macswap" => none("macswap", BackendSpec::MacSwap),
            "rxonly" => none("rxonly", BackendSpec::RxOnly),
            "channel" => none("channel", BackendSpec::Channel),
            "txonly" => {
                let len = match arg {
                    None => GENERATOR_DEFAULT_LEN,
                    Some(a) => a
                        .parse::<usize>()
                        .ok()
                        .filter(|l| super::basic::udp_frame(*l).is_ok())
                        .ok_or_else(|| ParseBackendSpecError::Length {
                            value: value.to_string(),
                        })?,
                };
                Ok(BackendSpec::TxOnly { len })
            }
            "pair" => Ok(BackendSpec::Pair {
                peer: needs("pair", "a peer device name (pair:<peer>)")?.to_string(),
            }),
            "pcap" => Ok(BackendSpec::Pcap {
                path: needs("pcap", "a file (pcap:<file>)")?.into(),
            }),
            "pcap-replay" => Ok(BackendSpec::PcapReplay {
                path: needs("pcap-replay", "a file (pcap-replay:<file>)")?.into(),
            }),
            _ => Err(ParseBackendSpecError::Unknown(value.to_string())),
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Loopback => f.write_str("loopback"),
            BackendSpec::MacSwap => f.write_str("macswap"),
            BackendSpec::RxOnly => f.write_str("rxonly"),
            BackendSpec::TxOnly { len } => write!(f, "txonly:{len}"),
            BackendSpec::Pair { peer } => write!(f, "pair:{peer}"),
            BackendSpec::Pcap { path } => write!(f, "pcap:{}", path.display()),
            BackendSpec::PcapReplay { path } => write!(f, "pcap-replay:{}", path.display()),
            BackendSpec::Channel => f.write_str("channel"),
        }
    }
}

/// Why [`BackendSpec::build`] failed.
#[derive(Debug, Error)]
pub enum BuildBackendError {
    /// `pair:<peer>`: the registry refused.
    #[error(transparent)]
    Pair(#[from] ConnectPairError),
    /// `pcap:` / `pcap-replay:`: the file.
    #[error(transparent)]
    Pcap(#[from] OpenPcapBackendError),
    /// `txonly:LEN`.
    #[error(transparent)]
    Generator(#[from] CreateGeneratorError),
    /// `channel`.
    #[error(transparent)]
    Channel(#[from] CreateChannelError),
}

/// A built back-end, with the handle the application needs for some of them.
#[derive(Clone)]
pub struct BuiltBackend {
    /// What to attach ([`super::attach`]).
    pub backend: Arc<dyn Backend>,
    /// The concrete back-end, for its counters and controls.
    pub control: BackendControl,
}

impl fmt::Debug for BuiltBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltBackend")
            .field("backend", &self.backend.name())
            .field("control", &self.control)
            .finish()
    }
}

/// The concrete back-end behind a [`BuiltBackend`].
#[derive(Debug, Clone)]
pub enum BackendControl {
    /// `loopback` and `macswap`: nothing to control.
    None,
    /// `rxonly`.
    Sink(Arc<Sink>),
    /// `txonly`.
    Generator(Arc<Generator>),
    /// `pair`.
    Pair(Arc<PairSide>),
    /// `pcap`, `pcap-replay`.
    Pcap(Arc<PcapBackend>),
    /// `channel`: the application's side.
    Channel(ChannelPort),
}

impl BackendSpec {
    /// Builds the back-end for device `device`; `pair:` goes through `pairs`.
    pub fn build(
        &self,
        device: &str,
        pairs: &PairRegistry,
    ) -> Result<BuiltBackend, BuildBackendError> {
        let built = match self {
            BackendSpec::Loopback => BuiltBackend {
                backend: Arc::new(Loopback),
                control: BackendControl::None,
            },
            BackendSpec::MacSwap => BuiltBackend {
                backend: Arc::new(MacSwap),
                control: BackendControl::None,
            },
            BackendSpec::RxOnly => {
                let s = Arc::new(Sink::new());
                BuiltBackend {
                    backend: s.clone(),
                    control: BackendControl::Sink(s),
                }
            }
            BackendSpec::TxOnly { len } => {
                let g = Arc::new(Generator::udp(*len)?);
                BuiltBackend {
                    backend: g.clone(),
                    control: BackendControl::Generator(g),
                }
            }
            BackendSpec::Pair { peer } => {
                let side = pairs.connect(device, peer)?;
                BuiltBackend {
                    backend: side.clone(),
                    control: BackendControl::Pair(side),
                }
            }
            BackendSpec::Pcap { path } => {
                let p = Arc::new(PcapBackend::create(path)?);
                BuiltBackend {
                    backend: p.clone(),
                    control: BackendControl::Pcap(p),
                }
            }
            BackendSpec::PcapReplay { path } => {
                let p = Arc::new(PcapBackend::replay(path)?);
                BuiltBackend {
                    backend: p.clone(),
                    control: BackendControl::Pcap(p),
                }
            }
            BackendSpec::Channel => {
                let c = ChannelBackend::new(CHANNEL_DEFAULT_CAPACITY)?;
                let port = c.port();
                BuiltBackend {
                    backend: Arc::new(c),
                    control: BackendControl::Channel(port),
                }
            }
        };
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_prints_back() {
        let cases = [
            ("loopback", BackendSpec::Loopback),
            ("macswap", BackendSpec::MacSwap),
            ("rxonly", BackendSpec::RxOnly),
            ("txonly", BackendSpec::TxOnly { len: 64 }),
            ("txonly:1500", BackendSpec::TxOnly { len: 1500 }),
            (
                "pair:emu_iavf1",
                BackendSpec::Pair {
                    peer: "emu_iavf1".into(),
                },
            ),
            (
                "pcap:/tmp/a:b.pcap",
                BackendSpec::Pcap {
                    path: "/tmp/a:b.pcap".into(),
                },
            ),
            (
                "pcap-replay:in.pcap",
                BackendSpec::PcapReplay {
                    path: "in.pcap".into(),
                },
            ),
            ("channel", BackendSpec::Channel),
        ];
        for (text, spec) in cases {
            assert_eq!(text.parse::<BackendSpec>(), Ok(spec.clone()), "{text}");
            let printed = spec.to_string();
            assert_eq!(printed.parse::<BackendSpec>(), Ok(spec), "{printed}");
        }
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let err = |s: &str| s.parse::<BackendSpec>().expect_err(s);
        assert_eq!(err("vhost"), ParseBackendSpecError::Unknown("vhost".into()));
        assert!(err("vhost").to_string().contains("\"vhost\""));
        assert!(matches!(err(""), ParseBackendSpecError::Unknown(_)));
        assert!(matches!(err("Loopback"), ParseBackendSpecError::Unknown(_)));
        assert!(matches!(
            err("pair"),
            ParseBackendSpecError::MissingArgument { kind: "pair", .. }
        ));
        assert!(matches!(
            err("pair:"),
            ParseBackendSpecError::MissingArgument { kind: "pair", .. }
        ));
        assert!(matches!(
            err("pcap"),
            ParseBackendSpecError::MissingArgument { kind: "pcap", .. }
        ));
        assert!(matches!(
            err("loopback:x"),
            ParseBackendSpecError::UnexpectedArgument {
                kind: "loopback",
                ..
            }
        ));
        for bad in [
            "txonly:",
            "txonly:abc",
            "txonly:41",
            "txonly:9729",
            "txonly:-1",
        ] {
            assert_eq!(
                err(bad),
                ParseBackendSpecError::Length { value: bad.into() }
            );
        }
        assert!(err("txonly:10").to_string().contains("txonly:10"));
    }

    #[test]
    fn build_makes_each_back_end_and_routes_pair_through_the_registry() {
        let reg = PairRegistry::new();
        let names = [
            ("loopback", "loopback"),
            ("macswap", "macswap"),
            ("rxonly", "rxonly"),
            ("txonly:128", "txonly"),
            ("channel", "channel"),
        ];
        for (text, name) in names {
            let spec: BackendSpec = text.parse().expect("parse");
            let b = spec.build("emu_iavf0", &reg).expect("build");
            assert_eq!(b.backend.name(), name);
        }
        let b = BackendSpec::TxOnly { len: 128 }
            .build("d", &reg)
            .expect("txonly");
        match b.control {
            BackendControl::Generator(g) => assert_eq!(g.template().len(), 128),
            other => panic!("{other:?}"),
        }
        let a = BackendSpec::Pair {
            peer: "emu_iavf1".into(),
        }
        .build("emu_iavf0", &reg)
        .expect("pair a");
        assert!(matches!(a.control, BackendControl::Pair(_)));
        let b = BackendSpec::Pair {
            peer: "emu_iavf0".into(),
        }
        .build("emu_iavf1", &reg)
        .expect("pair b");
        assert_eq!(b.backend.name(), "pair");
        assert!(matches!(
            BackendSpec::Pair {
                peer: "emu_iavf2".into()
            }
            .build("emu_iavf2", &reg),
            Err(BuildBackendError::Pair(ConnectPairError::SelfPair { .. }))
        ));
        assert!(matches!(
            BackendSpec::PcapReplay {
                path: "/nonexistent/x.pcap".into()
            }
            .build("d", &reg),
            Err(BuildBackendError::Pcap(_))
        ));
        match BackendSpec::Channel
            .build("d", &reg)
            .expect("channel")
            .control
        {
            BackendControl::Channel(port) => assert_eq!(port.pending(), 0),
            other => panic!("{other:?}"),
        }
    }
}
