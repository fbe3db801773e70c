//! Properties of the virtchnl codec (`emudev_iavf::spec`) that the `virtchnl` target checks,
//! with seeds built by the spec's encoders and tests that run them on stable Rust.
//!
//! Input of [`check_virtchnl`]: byte 0 is the virtchnl op code (0..=255: every op virtchnl 1.1
//! defines, and unknown ones), the rest is the message body. Properties:
//!
//! - [`VfRequest::decode`] never panics; a decoded request has the input's op;
//! - a decoded request re-encodes (legacy layout) to bytes that decode to the same request, and
//!   the encoding is a fixed point after one round;
//! - the input length is one the op allows: equal to the legacy encoding's length, or for the
//!   list messages its flexible-array length (one placeholder element shorter), or any length for
//!   an op the codec does not model (its body is kept as is);
//! - the same bytes through every reply and descriptor decoder (`VfResource`, `PfEvent`,
//!   `EthStats`, `VersionInfo`, `RssHena`, `AqDesc`, TX/RX descriptors) never panic, and what
//!   decodes re-encodes to an equal value.
//!
//! A violated property panics with the input in hex.

use emudev_iavf::spec::aq::AqDesc;
use emudev_iavf::spec::desc::{RxDescRead, RxDescWb, TxContextDesc, TxDesc};
use emudev_iavf::spec::virtchnl::{
    caps, promisc, EthStats, EtherAddr, EtherAddrList, IrqMapInfo, PfEvent, PromiscInfo,
    QueuePairInfo, QueueSelect, RssHena, RssKey, RssLut, RxqInfo, TxqInfo, VectorMap, VersionInfo,
    VfRequest, VfResource, VirtchnlOp, VlanFilterList, VsiQueueConfigInfo, VsiResource,
};

use crate::hex;

/// Returns `Err(message)` from the enclosing function when the condition is false.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Fuzz entry for `virtchnl`: byte 0 is the op, the rest the body. Panics on a violated property.
pub fn check_virtchnl(data: &[u8]) {
    let Some((&op, msg)) = data.split_first() else {
        return;
    };
    if let Err(why) = virtchnl_properties(u32::from(op), msg) {
        panic!(
            "virtchnl property violated: {why}\n  op: {op}\n  body: {}",
            hex(msg)
        );
    }
}

/// How many bytes shorter than the legacy encoding the flexible-array layout of `req` is.
fn flex_saving(req: &VfRequest) -> Option<usize> {
    match req {
        VfRequest::ConfigVsiQueues(_) => Some(QueuePairInfo::SIZE),
        VfRequest::ConfigIrqMap(_) => Some(VectorMap::SIZE),
        VfRequest::AddEthAddr(_) | VfRequest::DelEthAddr(_) => Some(EtherAddr::SIZE),
        VfRequest::AddVlan(_) | VfRequest::DelVlan(_) => Some(2),
        VfRequest::ConfigRssKey(_) | VfRequest::ConfigRssLut(_) => Some(1),
        _ => None,
    }
}

/// The properties of one (op, body) pair, as a verdict.
pub fn virtchnl_properties(op: u32, msg: &[u8]) -> Result<(), String> {
    if let Ok(req) = VfRequest::decode(op, msg) {
        ensure!(req.op() == op, "decoded op {} from op {op}", req.op());
        let enc = req.encode();
        let back = VfRequest::decode(op, &enc)
            .map_err(|e| format!("re-encoded {req:?} does not decode: {e}"))?;
        ensure!(back == req, "round trip changed {req:?} into {back:?}");
        ensure!(back.encode() == enc, "encoding is not a fixed point");
        let len_ok = match &req {
            VfRequest::Other { .. } => msg == enc.as_slice(),
            r => {
                msg.len() == enc.len() || flex_saving(r).is_some_and(|s| msg.len() + s == enc.len())
            }
        };
        ensure!(
            len_ok,
            "accepted {} bytes; legacy encoding is {}",
            msg.len(),
            enc.len()
        );
    }
    replies_hold(msg)
}

fn replies_hold(b: &[u8]) -> Result<(), String> {
    if let Ok(r) = VfResource::decode(b) {
        let back = VfResource::decode(&r.encode())
            .map_err(|e| format!("re-encoded vf_resource does not decode: {e}"))?;
        ensure!(back == r, "vf_resource round trip: {r:?} -> {back:?}");
    }
    if let Ok(e) = PfEvent::decode(b) {
        ensure!(e.encode().len() == PfEvent::SIZE, "pf_event size");
        ensure!(PfEvent::decode(&e.encode()) == Ok(e), "pf_event round trip");
    }
    if let Ok(s) = EthStats::decode(b) {
        ensure!(s.encode() == b, "eth_stats is not byte-exact");
    }
    if let Ok(v) = VersionInfo::decode(b) {
        ensure!(v.encode() == b, "version_info is not byte-exact");
    }
    if let Ok(h) = RssHena::decode(b) {
        ensure!(h.encode() == b, "rss_hena is not byte-exact");
    }
    if let Ok(d) = AqDesc::decode(b) {
        ensure!(d.encode().as_slice() == b, "aq_desc is not byte-exact");
    }
    if let Ok(d) = TxDesc::decode(b) {
        ensure!(d.encode().as_slice() == b, "tx_desc is not byte-exact");
    }
    if let Ok(d) = TxContextDesc::decode(b) {
        ensure!(
            TxContextDesc::decode(&d.encode()) == Ok(d),
            "tx_context_desc round trip"
        );
    }
    if let Ok(d) = RxDescRead::decode(b) {
        ensure!(
            RxDescRead::decode(&d.encode32()) == Ok(d),
            "rx read round trip"
        );
    }
    if let Ok(d) = RxDescWb::decode(b) {
        ensure!(
            RxDescWb::decode(&d.encode32()) == Ok(d),
            "rx write-back round trip"
        );
    }
    Ok(())
}

fn qpair(q: u16) -> QueuePairInfo {
    QueuePairInfo {
        txq: TxqInfo {
            vsi_id: 1,
            queue_id: q,
            ring_len: 512,
            headwb_enabled: 0,
            dma_ring_addr: 0x10_0000 + u64::from(q) * 0x2000,
            dma_headwb_addr: 0,
        },
        rxq: RxqInfo {
            vsi_id: 1,
            queue_id: q,
            ring_len: 512,
            hdr_size: 0,
            splithdr_enabled: 0,
            databuffer_size: 2048,
            max_pkt_size: 1518,
            crc_disable: 0,
            rxdid: 1,
            dma_ring_addr: 0x20_0000 + u64::from(q) * 0x4000,
            rx_split_pos: 0,
        },
    }
}

/// One valid VF→PF message per modelled op (and a few unmodelled ones), plus reply-shaped
/// bodies, as (op, body).
pub fn virtchnl_seeds() -> Vec<(u32, Vec<u8>)> {
    let sel = QueueSelect {
        vsi_id: 1,
        rx_queues: 1,
        tx_queues: 1,
    };
    let reqs = vec![
        VfRequest::Version(VersionInfo::V1_1),
        VfRequest::ResetVf,
        VfRequest::GetVfResources {
            caps: Some(caps::BASE_MODE_OFFLOADS | caps::WB_ON_ITR),
        },
        VfRequest::GetVfResources { caps: None },
        VfRequest::ConfigVsiQueues(VsiQueueConfigInfo {
            vsi_id: 1,
            qpair: vec![qpair(0), qpair(1)],
        }),
        VfRequest::ConfigIrqMap(IrqMapInfo {
            vecmap: vec![VectorMap {
                vsi_id: 1,
                vector_id: 1,
                rxq_map: 3,
                txq_map: 3,
                rxitr_idx: 0,
                txitr_idx: 1,
            }],
        }),
        VfRequest::EnableQueues(sel),
        VfRequest::DisableQueues(sel),
        VfRequest::AddEthAddr(EtherAddrList {
            vsi_id: 1,
            list: vec![EtherAddr {
                addr: [2, 0, 0, 0, 0, 1],
                addr_type: 0,
            }],
        }),
        VfRequest::DelEthAddr(EtherAddrList {
            vsi_id: 1,
            list: vec![
                EtherAddr {
                    addr: [2, 0, 0, 0, 0, 1],
                    addr_type: 0,
                },
                EtherAddr {
                    addr: [1, 0, 0x5e, 0, 0, 1],
                    addr_type: 2,
                },
            ],
        }),
        VfRequest::AddVlan(VlanFilterList {
            vsi_id: 1,
            vlan_id: vec![10, 20],
        }),
        VfRequest::DelVlan(VlanFilterList {
            vsi_id: 1,
            vlan_id: vec![10],
        }),
        VfRequest::ConfigPromiscuousMode(PromiscInfo {
            vsi_id: 1,
            flags: promisc::UNICAST,
        }),
        VfRequest::GetStats(sel),
        VfRequest::ConfigRssKey(RssKey {
            vsi_id: 1,
            key: (0..52).collect(),
        }),
        VfRequest::ConfigRssLut(RssLut {
            vsi_id: 1,
            lut: (0..64).map(|i| i % 2).collect(),
        }),
        VfRequest::GetRssHenaCaps,
        VfRequest::SetRssHena(RssHena { hena: 0x8000_0000 }),
        VfRequest::EnableVlanStripping,
        VfRequest::DisableVlanStripping,
        VfRequest::Other {
            op: VirtchnlOp::RequestQueues.raw(),
            msg: vec![4, 0],
        },
    ];
    let mut seeds: Vec<(u32, Vec<u8>)> = reqs.iter().map(|r| (r.op(), r.encode())).collect();
    let res = VfResource {
        num_queue_pairs: 4,
        max_vectors: 5,
        max_mtu: 1500,
        vf_cap_flags: caps::L2,
        rss_key_size: 52,
        rss_lut_size: 64,
        vsi_res: vec![VsiResource {
            vsi_id: 1,
            num_queue_pairs: 4,
            vsi_type: 6,
            qset_handle: 0,
            default_mac_addr: [2, 0, 0, 0, 0, 1],
        }],
    };
    seeds.push((VirtchnlOp::GetVfResources.raw(), res.encode()));
    seeds.push((
        VirtchnlOp::Event.raw(),
        PfEvent::link_change(10_000, true).encode(),
    ));
    seeds.push((VirtchnlOp::GetStats.raw(), EthStats::default().encode()));
    seeds.push((
        VirtchnlOp::Unknown.raw(),
        AqDesc::send_to_pf(6, 200, 0x1000).encode().to_vec(),
    ));
    seeds.push((
        VirtchnlOp::Unknown.raw(),
        TxDesc::data(0x1000, 60, 3, 0, 0).encode().to_vec(),
    ));
    seeds.push((
        VirtchnlOp::Unknown.raw(),
        RxDescWb {
            status_error_len: 1,
            ..Default::default()
        }
        .encode32()
        .to_vec(),
    ));
    seeds
}

/// A seed as a `virtchnl` fuzz input (op byte, then body).
pub fn fuzz_input(op: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + body.len());
    v.push(op as u8);
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_holds_the_properties_and_requests_decode() {
        let mut decoded = Vec::new();
        for (op, body) in virtchnl_seeds() {
            assert!(op < 256, "op {op} does not fit the selector byte");
            virtchnl_properties(op, &body).unwrap_or_else(|e| panic!("op {op}: {e}"));
            check_virtchnl(&fuzz_input(op, &body));
            if let Ok(r) = VfRequest::decode(op, &body) {
                decoded.push(r.op());
            }
        }
        for op in [
            1u32, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 23, 24, 25, 26, 27, 28,
        ] {
            assert!(decoded.contains(&op), "no decoding seed for op {op}");
        }
    }

    #[test]
    fn truncations_extensions_and_bit_flips_hold_the_properties() {
        let mut accepted = 0usize;
        for (op, body) in virtchnl_seeds() {
            for n in 0..body.len() {
                virtchnl_properties(op, &body[..n])
                    .unwrap_or_else(|e| panic!("op {op} cut to {n}: {e}"));
                accepted += usize::from(VfRequest::decode(op, &body[..n]).is_ok());
            }
            let mut longer = body.clone();
            longer.push(0);
            virtchnl_properties(op, &longer).unwrap_or_else(|e| panic!("op {op} + 1: {e}"));
            for i in 0..body.len() * 8 {
                let mut b = body.clone();
                b[i / 8] ^= 1 << (i % 8);
                virtchnl_properties(op, &b).unwrap_or_else(|e| panic!("op {op} bit {i}: {e}"));
            }
            for other in [0u32, 4, 17, 50, 255] {
                virtchnl_properties(other, &body)
                    .unwrap_or_else(|e| panic!("body of {op} as op {other}: {e}"));
            }
        }
        // Flexible layouts (legacy minus one element) are among the accepted truncations.
        assert!(accepted >= 6, "only {accepted} truncations decoded");
    }

    #[test]
    fn flex_saving_matches_the_spec_layouts() {
        let m = VsiQueueConfigInfo {
            vsi_id: 1,
            qpair: vec![qpair(0)],
        };
        let req = VfRequest::ConfigVsiQueues(m.clone());
        assert_eq!(
            flex_saving(&req).map(|s| m.encode().len() - s),
            Some(VsiQueueConfigInfo::flex_len(1))
        );
        let key = RssKey {
            vsi_id: 1,
            key: vec![1; 52],
        };
        assert_eq!(
            flex_saving(&VfRequest::ConfigRssKey(key.clone())).map(|s| key.encode().len() - s),
            Some(RssKey::flex_len(52))
        );
    }

    #[test]
    fn empty_input_is_ignored() {
        check_virtchnl(&[]);
        check_virtchnl(&[2]);
    }
}
