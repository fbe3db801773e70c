//! Seed inputs built with the wire encoders: at least one valid message per client command and
//! one valid payload per reply decoder.
//!
//! The tests run the properties over these (and over every truncation and bit flip of them); the
//! `write_seeds` example writes them into `corpus/<target>/` so a fuzzing run starts from valid
//! messages. No binary corpus is committed: this module is the corpus.

use emudev_vfio_user::wire::{
    Capabilities, Command, DeviceFeatureMsg, DeviceInfoMsg, DmaAccess, DmaMap, DmaUnmap, Header,
    IoFdEntry, IrqAction, IrqInfoMsg, IrqSetData, MessageBuilder, MigData, MigrationCap,
    RegionAccess, RegionInfoMsg, RegionIoFdsMsg, SetIrqs, SparseMmapArea, TwinSocketCap, Version,
    WriteMulti, WriteMultiEntry, HEADER_SIZE,
};

use crate::ReplyDecoder;

/// A whole request message and the fd count it is sent with.
#[derive(Clone, Debug)]
pub struct RequestSeed {
    /// A file-name-safe label.
    pub name: &'static str,
    /// How many fds come with it (0..=3).
    pub nfds: usize,
    /// The message, header included.
    pub message: Vec<u8>,
}

impl RequestSeed {
    /// The `wire_decode` input: the nfds byte, then the message.
    pub fn fuzz_input(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.message.len());
        v.push(self.nfds as u8);
        v.extend_from_slice(&self.message);
        v
    }
}

/// A reply payload (no header) and the decoder it is for.
#[derive(Clone, Debug)]
pub struct ReplySeed {
    /// A file-name-safe label.
    pub name: &'static str,
    /// The decoder that accepts it.
    pub decoder: ReplyDecoder,
    /// The payload.
    pub payload: Vec<u8>,
}

impl ReplySeed {
    /// The `wire_reply` input: the selector byte, then the payload.
    pub fn fuzz_input(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.payload.len());
        v.push(self.decoder.selector());
        v.extend_from_slice(&self.payload);
        v
    }
}

fn command(msg_id: u16, cmd: Command, encode: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut b = MessageBuilder::command(msg_id, cmd);
    encode(&mut b);
    b.finish()
}

fn payload(cmd: Command, encode: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut b = MessageBuilder::reply(1, cmd as u16);
    encode(&mut b);
    let mut m = b.finish();
    m.drain(..HEADER_SIZE);
    m
}

/// QEMU's VERSION capabilities plus the twin-socket object: every key the decoder knows.
fn full_caps() -> Capabilities {
    Capabilities {
        max_msg_fds: Some(16),
        max_data_xfer_size: Some(1 << 20),
        max_dma_maps: Some(65535),
        pgsizes: Some(4096),
        twin_socket: Some(TwinSocketCap {
            supported: true,
            fd_index: Some(0),
        }),
        write_multiple: Some(true),
        migration: Some(MigrationCap {
            pgsize: Some(4096),
            max_bitmap_size: Some(256 << 20),
        }),
    }
}

fn region_info() -> RegionInfoMsg {
    RegionInfoMsg {
        flags: 0x7, // READ | WRITE | MMAP
        index: 2,
        size: 0x8000,
        offset: 0x8000,
        sparse: vec![
            SparseMmapArea {
                offset: 0x2000,
                size: 0x1000,
            },
            SparseMmapArea {
                offset: 0x4000,
                size: 0x2000,
            },
        ],
        ..Default::default()
    }
}

/// Valid request messages: every client command, some in more than one shape.
pub fn requests() -> Vec<RequestSeed> {
    let seed = |name, nfds, message| RequestSeed {
        name,
        nfds,
        message,
    };
    let multi_entry = |offset, count, data| WriteMultiEntry {
        offset,
        region: 0,
        count,
        data,
    };
    vec![
        seed(
            "version_caps",
            0,
            command(1, Command::Version, |b| {
                Version {
                    major: 0,
                    minor: 0,
                    caps: Some(full_caps()),
                }
                .encode(b)
            }),
        ),
        seed(
            "version_bare",
            0,
            command(1, Command::Version, |b| Version::default().encode(b)),
        ),
        seed(
            "dma_map_fd",
            1,
            command(2, Command::DmaMap, |b| {
                DmaMap {
                    argsz: 32,
                    flags: 3,
                    offset: 0x1000,
                    address: 0x10_0000,
                    size: 0x4000,
                }
                .encode(b)
            }),
        ),
        seed(
            "dma_map_nofd",
            0,
            command(2, Command::DmaMap, |b| {
                DmaMap {
                    argsz: 32,
                    flags: 1,
                    offset: 0,
                    address: 0x20_0000,
                    size: 0x1000,
                }
                .encode(b)
            }),
        ),
        seed(
            "dma_unmap",
            0,
            command(3, Command::DmaUnmap, |b| {
                DmaUnmap {
                    argsz: 24,
                    flags: 0,
                    address: 0x10_0000,
                    size: 0x4000,
                }
                .encode(b)
            }),
        ),
        seed(
            "dma_unmap_all",
            0,
            command(3, Command::DmaUnmap, |b| {
                DmaUnmap {
                    argsz: 24,
                    flags: 2,
                    address: 0,
                    size: 0,
                }
                .encode(b)
            }),
        ),
        seed(
            "device_get_info",
            0,
            command(4, Command::DeviceGetInfo, |b| {
                DeviceInfoMsg {
                    argsz: 16,
                    ..Default::default()
                }
                .encode(b)
            }),
        ),
        seed(
            "get_region_info",
            0,
            command(5, Command::DeviceGetRegionInfo, |b| {
                RegionInfoMsg::encode_request(2, 80, b)
            }),
        ),
        seed(
            "get_region_io_fds",
            0,
            command(6, Command::DeviceGetRegionIoFds, |b| {
                RegionIoFdsMsg::encode_request(0, 4096, b)
            }),
        ),
        seed(
            "get_irq_info",
            0,
            command(7, Command::DeviceGetIrqInfo, |b| {
                IrqInfoMsg {
                    argsz: 16,
                    index: 2,
                    ..Default::default()
                }
                .encode(b)
            }),
        ),
        seed(
            "set_irqs_eventfd",
            2,
            command(8, Command::DeviceSetIrqs, |b| {
                SetIrqs {
                    argsz: 20,
                    action: IrqAction::Trigger,
                    data: IrqSetData::Eventfd,
                    index: 2,
                    start: 0,
                    count: 2,
                }
                .encode(b)
            }),
        ),
        seed(
            "set_irqs_bool",
            0,
            command(8, Command::DeviceSetIrqs, |b| {
                let data = IrqSetData::Bool(vec![true, false, true]);
                SetIrqs {
                    argsz: 23,
                    action: IrqAction::Mask,
                    data,
                    index: 1,
                    start: 0,
                    count: 3,
                }
                .encode(b)
            }),
        ),
        seed(
            "set_irqs_none",
            0,
            command(8, Command::DeviceSetIrqs, |b| {
                SetIrqs {
                    argsz: 20,
                    action: IrqAction::Unmask,
                    data: IrqSetData::None,
                    index: 0,
                    start: 0,
                    count: 1,
                }
                .encode(b)
            }),
        ),
        seed(
            "region_read",
            0,
            command(9, Command::RegionRead, |b| {
                RegionAccess {
                    offset: 0x10,
                    region: 7,
                    count: 4,
                }
                .encode(b)
            }),
        ),
        seed(
            "region_write",
            0,
            command(10, Command::RegionWrite, |b| {
                RegionAccess {
                    offset: 0x10,
                    region: 0,
                    count: 4,
                }
                .encode(b);
                b.bytes(&[0xde, 0xad, 0xbe, 0xef]);
            }),
        ),
        seed("device_reset", 0, command(13, Command::DeviceReset, |_| {})),
        seed(
            "region_write_multi",
            0,
            command(15, Command::RegionWriteMulti, |b| {
                WriteMulti {
                    entries: vec![
                        multi_entry(0x20, 4, [1, 2, 3, 4, 0, 0, 0, 0]),
                        multi_entry(0x28, 8, [9; 8]),
                    ],
                }
                .encode(b)
            }),
        ),
        seed(
            "device_feature_set",
            0,
            command(16, Command::DeviceFeature, |b| {
                // SET of MIG_DEVICE_STATE (feature 2) to STOP (1).
                DeviceFeatureMsg {
                    argsz: 0,
                    flags: (1 << 17) | 2,
                    data: 1u32.to_ne_bytes().to_vec(),
                }
                .encode(b)
            }),
        ),
        seed(
            "device_feature_probe",
            0,
            command(16, Command::DeviceFeature, |b| {
                DeviceFeatureMsg {
                    argsz: 0,
                    flags: (1 << 18) | (1 << 16) | 1,
                    data: Vec::new(),
                }
                .encode(b)
            }),
        ),
        seed(
            "mig_data_read",
            0,
            command(17, Command::MigDataRead, |b| {
                MigData {
                    argsz: 8 + 64,
                    size: 64,
                    data: Vec::new(),
                }
                .encode(b)
            }),
        ),
        seed(
            "mig_data_write",
            0,
            command(18, Command::MigDataWrite, |b| {
                MigData {
                    argsz: 8 + 5,
                    size: 5,
                    data: b"state".to_vec(),
                }
                .encode(b)
            }),
        ),
    ]
}

/// Valid reply payloads: one or more per reply decoder.
pub fn replies() -> Vec<ReplySeed> {
    let seed = |name, decoder, payload| ReplySeed {
        name,
        decoder,
        payload,
    };
    let io_fd = |offset, fd_index| IoFdEntry {
        offset,
        size: 4,
        fd_index,
        kind: 0,
        flags: 1,
        datamatch: 0x55,
    };
    vec![
        seed(
            "region_info_sparse",
            ReplyDecoder::RegionInfo,
            payload(Command::DeviceGetRegionInfo, |b| {
                region_info().encode_reply(u32::MAX, b)
            }),
        ),
        seed(
            "region_info_plain",
            ReplyDecoder::RegionInfo,
            payload(Command::DeviceGetRegionInfo, |b| {
                region_info().encode_reply(32, b)
            }),
        ),
        seed(
            "region_io_fds",
            ReplyDecoder::RegionIoFds,
            payload(Command::DeviceGetRegionIoFds, |b| {
                let m = RegionIoFdsMsg {
                    index: 0,
                    entries: vec![io_fd(0x1000, 0), io_fd(0x1004, 1)],
                    ..Default::default()
                };
                m.encode_reply(u32::MAX, b);
            }),
        ),
        seed(
            "region_io_fds_head",
            ReplyDecoder::RegionIoFds,
            payload(Command::DeviceGetRegionIoFds, |b| {
                let m = RegionIoFdsMsg {
                    index: 0,
                    entries: vec![io_fd(0x1000, 0)],
                    ..Default::default()
                };
                m.encode_reply(16, b);
            }),
        ),
        seed(
            "dma_read",
            ReplyDecoder::DmaRead,
            payload(Command::DmaRead, |b| {
                DmaAccess {
                    address: 0x10_0000,
                    count: 3,
                }
                .encode(b);
                b.bytes(&[1, 2, 3]);
            }),
        ),
        seed(
            "dma_write",
            ReplyDecoder::DmaWrite,
            payload(Command::DmaWrite, |b| {
                DmaAccess {
                    address: 0x10_0000,
                    count: 3,
                }
                .encode(b)
            }),
        ),
        seed(
            "dma_unmap",
            ReplyDecoder::DmaUnmap,
            payload(Command::DmaUnmap, |b| {
                DmaUnmap {
                    argsz: 24,
                    flags: 0,
                    address: 0x10_0000,
                    size: 0x4000,
                }
                .encode(b)
            }),
        ),
        seed(
            "device_info",
            ReplyDecoder::DeviceInfo,
            payload(Command::DeviceGetInfo, |b| {
                DeviceInfoMsg {
                    argsz: 16,
                    flags: 3,
                    num_regions: 9,
                    num_irqs: 5,
                }
                .encode(b)
            }),
        ),
        seed(
            "irq_info",
            ReplyDecoder::IrqInfo,
            payload(Command::DeviceGetIrqInfo, |b| {
                IrqInfoMsg {
                    argsz: 16,
                    flags: 9,
                    index: 2,
                    count: 32,
                }
                .encode(b)
            }),
        ),
        seed(
            "region_read",
            ReplyDecoder::RegionRead,
            payload(Command::RegionRead, |b| {
                RegionAccess {
                    offset: 0x10,
                    region: 7,
                    count: 4,
                }
                .encode(b);
                b.bytes(&[0x86, 0x80, 0xe8, 0x11]);
            }),
        ),
        seed(
            "region_write",
            ReplyDecoder::RegionWrite,
            payload(Command::RegionWrite, |b| {
                RegionAccess {
                    offset: 0x10,
                    region: 0,
                    count: 4,
                }
                .encode(b)
            }),
        ),
        seed(
            "device_feature",
            ReplyDecoder::DeviceFeature,
            payload(Command::DeviceFeature, |b| {
                DeviceFeatureMsg {
                    argsz: 12,
                    flags: (1 << 16) | 2,
                    data: 2u32.to_ne_bytes().to_vec(),
                }
                .encode(b)
            }),
        ),
        seed(
            "mig_data",
            ReplyDecoder::MigData,
            payload(Command::MigDataRead, |b| {
                MigData {
                    argsz: 8 + 4,
                    size: 4,
                    data: vec![1, 2, 3, 4],
                }
                .encode(b)
            }),
        ),
        seed(
            "version",
            ReplyDecoder::Version,
            payload(Command::Version, |b| {
                Version {
                    major: 0,
                    minor: 0,
                    caps: Some(full_caps()),
                }
                .encode(b)
            }),
        ),
    ]
}

/// Whether `decoder` accepts `p`.
pub fn decodes(decoder: ReplyDecoder, p: &[u8]) -> bool {
    match decoder {
        ReplyDecoder::RegionInfo => RegionInfoMsg::decode_reply(p).is_ok(),
        ReplyDecoder::RegionIoFds => RegionIoFdsMsg::decode_reply(p).is_ok(),
        ReplyDecoder::DmaRead => DmaAccess::decode_read_reply(p).is_ok(),
        ReplyDecoder::DmaUnmap => DmaUnmap::decode_reply(p).is_ok(),
        ReplyDecoder::DeviceInfo => DeviceInfoMsg::decode_reply(p).is_ok(),
        ReplyDecoder::IrqInfo => IrqInfoMsg::decode_reply(p).is_ok(),
        ReplyDecoder::RegionRead => RegionAccess::decode_read_reply(p).is_ok(),
        ReplyDecoder::DeviceFeature => DeviceFeatureMsg::decode_reply(p).is_ok(),
        ReplyDecoder::MigData => MigData::decode_with_data(p).is_ok(),
        ReplyDecoder::Version => Version::decode(p).is_ok(),
        ReplyDecoder::RegionWrite => RegionAccess::decode_write_reply(p).is_ok(),
        ReplyDecoder::DmaWrite => DmaAccess::decode_write_reply(p).is_ok(),
    }
}

/// A copy of a (truncated) message whose header's `msg_size` says its real length; `None` when
/// it is shorter than a header.
pub fn with_msg_size(msg: &[u8]) -> Option<Vec<u8>> {
    let mut h = Header::decode(msg).ok()?;
    h.msg_size = u32::try_from(msg.len()).ok()?;
    let mut v = msg.to_vec();
    h.encode(&mut v[..HEADER_SIZE]);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_are_unique_and_file_safe() {
        let mut names: Vec<&str> = requests()
            .iter()
            .map(|s| s.name)
            .chain(replies().iter().map(|s| s.name))
            .collect();
        for n in &names {
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{n}"
            );
        }
        let (r, p) = (requests().len(), replies().len());
        names.truncate(r);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), r, "request seed names repeat");
        let mut rn: Vec<&str> = replies().iter().map(|s| s.name).collect();
        rn.sort_unstable();
        rn.dedup();
        assert_eq!(rn.len(), p, "reply seed names repeat");
    }

    #[test]
    fn fuzz_inputs_carry_the_selector_byte() {
        for s in requests() {
            let i = s.fuzz_input();
            assert_eq!(usize::from(i[0] % 4), s.nfds, "{}", s.name);
            assert_eq!(&i[1..], &s.message[..]);
        }
        for s in replies() {
            let i = s.fuzz_input();
            assert_eq!(ReplyDecoder::from_selector(i[0]), s.decoder, "{}", s.name);
            assert_eq!(&i[1..], &s.payload[..]);
        }
    }

    #[test]
    fn msg_size_fix_up_matches_the_length() {
        let m = requests().remove(0).message;
        let cut = &m[..20];
        let fixed = with_msg_size(cut).unwrap_or_default();
        assert_eq!(Header::decode(&fixed).map(|h| h.msg_size), Ok(20));
        assert_eq!(&fixed[HEADER_SIZE..], &cut[HEADER_SIZE..]);
        assert_eq!(with_msg_size(&m[..15]), None);
    }
}
