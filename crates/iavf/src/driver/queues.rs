//! Queue pairs: where each pair's TX ring, RX ring and packet buffers sit in the driver's DMA
//! memory ([`QueueLayout`], one block for all pairs), the handle the data path gets
//! ([`QueuePair`]), and the virtchnl messages built from them (CONFIG_VSI_QUEUES,
//! CONFIG_IRQ_MAP).

use emudev_dma::{DmaAccessError, SharedMemory};
use emudev_vfio_user::client::DmaBuffer;
use std::collections::VecDeque;

use crate::spec::desc::{
    RxDescRead, RING_BASE_ALIGN, RXDID_LEGACY_1, RX_DESC32_SIZE, TX_DESC_SIZE,
};
use crate::spec::virtchnl::{
    IrqMapInfo, QueuePairInfo, RxqInfo, TxqInfo, VectorMap, VsiQueueConfigInfo, RX_HSPLIT_NO_SPLIT,
};

/// Page size the areas are aligned to (also a multiple of [`RING_BASE_ALIGN`]).
const PAGE: u64 = 4096;
const _: () = assert!(PAGE.is_multiple_of(RING_BASE_ALIGN));

/// `IAVF_RX_ITR`: the ITR index of RX queues in CONFIG_IRQ_MAP.
pub const RX_ITR_INDEX: u16 = 0;
/// `IAVF_TX_ITR`: the ITR index of TX queues in CONFIG_IRQ_MAP.
pub const TX_ITR_INDEX: u16 = 1;

fn page_align(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// One area of a queue pair's memory: offset in the [`DmaBuffer`], the IOVA the device uses,
/// and the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Offset inside [`QueuePair::memory`].
    pub offset: u64,
    /// IOVA (what goes in descriptors and virtchnl messages).
    pub iova: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Area {
    /// Offset and IOVA of element `i` of `size` bytes, if it is inside the area.
    pub fn element(&self, i: u64, size: u64) -> Option<(u64, u64)> {
        let rel = i.checked_mul(size)?;
        (rel.checked_add(size)? <= self.bytes).then(|| (self.offset + rel, self.iova + rel))
    }
}

/// Where the areas of every pair sit in the queue memory block: per pair, a TX ring
/// (16-byte descriptors), an RX ring (32-byte legacy descriptors), `ring_len` RX buffers and
/// `ring_len` TX buffers, each area 4 KiB aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    pub(crate) pairs: u16,
    pub(crate) ring_len: u16,
    pub(crate) buf_size: u32,
    tx_ring: u64,
    rx_ring: u64,
    bufs: u64,
    stride: u64,
}

impl QueueLayout {
    pub(crate) fn new(pairs: u16, ring_len: u16, buf_size: u32) -> Self {
        let n = u64::from(ring_len);
        let tx_ring = page_align(n * TX_DESC_SIZE as u64);
        let rx_ring = page_align(n * RX_DESC32_SIZE as u64);
        let bufs = page_align(n * u64::from(buf_size));
        QueueLayout {
            pairs,
            ring_len,
            buf_size,
            tx_ring,
            rx_ring,
            bufs,
            stride: tx_ring + rx_ring + 2 * bufs,
        }
    }

    /// Bytes of the whole block.
    pub(crate) fn total(&self) -> u64 {
        self.stride * u64::from(self.pairs)
    }

    fn base(&self, q: u16) -> u64 {
        self.stride * u64::from(q)
    }

    fn area(&self, iova: u64, offset: u64, bytes: u64) -> Area {
        Area {
            offset,
            iova: iova + offset,
            bytes,
        }
    }

    /// Pair `q`'s TX ring.
    pub(crate) fn tx_ring(&self, iova: u64, q: u16) -> Area {
        let n = u64::from(self.ring_len);
        self.area(iova, self.base(q), n * TX_DESC_SIZE as u64)
    }

    /// Pair `q`'s RX ring.
    pub(crate) fn rx_ring(&self, iova: u64, q: u16) -> Area {
        let n = u64::from(self.ring_len);
        self.area(iova, self.base(q) + self.tx_ring, n * RX_DESC32_SIZE as u64)
    }

    /// Pair `q`'s RX buffers.
    pub(crate) fn rx_bufs(&self, iova: u64, q: u16) -> Area {
        let bytes = u64::from(self.ring_len) * u64::from(self.buf_size);
        self.area(iova, self.base(q) + self.tx_ring + self.rx_ring, bytes)
    }

    /// Pair `q`'s TX buffers.
    pub(crate) fn tx_bufs(&self, iova: u64, q: u16) -> Area {
        let bytes = u64::from(self.ring_len) * u64::from(self.buf_size);
        self.area(
            iova,
            self.base(q) + self.tx_ring + self.rx_ring + self.bufs,
            bytes,
        )
    }
}

/// Where one pair lives and which vector it uses: everything about a [`QueuePair`] but its
/// memory handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PairPlan {
    pub(crate) id: u16,
    pub(crate) vector: u16,
    pub(crate) ring_len: u16,
    pub(crate) buf_size: u32,
    pub(crate) tx_ring: Area,
    pub(crate) rx_ring: Area,
    pub(crate) tx_bufs: Area,
    pub(crate) rx_bufs: Area,
    /// `QTX_TAIL1`, `QRX_TAIL1` (absent beyond the 16 queues a VF can have).
    pub(crate) tails: Option<(u64, u64)>,
}

impl QueueLayout {
    /// The plan of pair `q` with queue vector `vector` and tail registers `tails` (TX, RX).
    pub(crate) fn plan(
        &self,
        iova: u64,
        q: u16,
        vector: u16,
        tails: Option<(u64, u64)>,
    ) -> PairPlan {
        PairPlan {
            id: q,
            vector,
            ring_len: self.ring_len,
            buf_size: self.buf_size,
            tx_ring: self.tx_ring(iova, q),
            rx_ring: self.rx_ring(iova, q),
            tx_bufs: self.tx_bufs(iova, q),
            rx_bufs: self.rx_bufs(iova, q),
            tails,
        }
    }
}

/// A queue pair as the driver configured it: ids, its MSI-X vector, and where its rings and
/// buffers are. The data path posts RX buffers and TX packets through [`QueuePair::memory`] and
/// rings the tails with the client (region [`super::BAR0_REGION`]).
#[derive(Debug, Clone)]
pub struct QueuePair {
    pub(crate) plan: PairPlan,
    pub(crate) memory: DmaBuffer,
    pub(crate) tx_tail: u64,
    pub(crate) rx_tail: u64,
    pub(crate) ring: RingState,
}

/// The data path's indexes into a pair's rings (see `driver::datapath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RingState {
    /// Next TX descriptor to fill.
    pub(crate) tx_next: u32,
    /// Oldest TX descriptor not known done.
    pub(crate) tx_clean: u32,
    /// The TX descriptors in flight that carry RS, oldest first: when the device marks one
    /// done, every descriptor up to it is done (it works through the ring in order).
    pub(crate) tx_rs: VecDeque<u32>,
    /// Next RX descriptor to look at.
    pub(crate) rx_next: u32,
    /// RX packets the device flagged with an error (dropped by the driver).
    pub(crate) rx_errors: u64,
    /// The pool buffer posted in each RX descriptor.
    pub(crate) rx_buf: Vec<u32>,
    /// The pool buffer each TX descriptor in flight carries ([`NO_BUF`]: none, e.g. a raw
    /// descriptor), returned to the pool when the device marks its packet done.
    pub(crate) tx_buf: Vec<u32>,
    /// Free pool buffers (a stack).
    pub(crate) free: Vec<u32>,
}

/// A TX descriptor that owns no pool buffer.
pub(crate) const NO_BUF: u32 = u32::MAX;

impl RingState {
    /// Fresh indexes and a full pool of `2 * ring_len` buffers: buffers `0..ring_len` (the RX
    /// area) posted in RX descriptor `i`, buffers `ring_len..2 * ring_len` (the TX area) free.
    pub(crate) fn new(ring_len: u16) -> Self {
        let len = u32::from(ring_len);
        RingState {
            tx_next: 0,
            tx_clean: 0,
            tx_rs: VecDeque::with_capacity(usize::from(ring_len)),
            rx_next: 0,
            rx_errors: 0,
            rx_buf: (0..len).collect(),
            tx_buf: vec![NO_BUF; usize::from(ring_len)],
            free: (len..2 * len).rev().collect(),
        }
    }
}

impl QueuePair {
    /// Queue id (the same for the TX and the RX queue).
    pub fn id(&self) -> u16 {
        self.plan.id
    }
    /// MSI-X vector both queues are mapped to (1..).
    pub fn vector(&self) -> u16 {
        self.plan.vector
    }
    /// Descriptors per ring.
    pub fn ring_len(&self) -> u16 {
        self.plan.ring_len
    }
    /// Bytes per packet buffer (the RX `databuffer_size`).
    pub fn buffer_size(&self) -> u32 {
        self.plan.buf_size
    }
    /// The DMA memory holding every area below (shared by all pairs).
    pub fn memory(&self) -> &DmaBuffer {
        &self.memory
    }
    /// The TX ring (16-byte descriptors).
    pub fn tx_ring(&self) -> Area {
        self.plan.tx_ring
    }
    /// The RX ring (32-byte legacy descriptors).
    pub fn rx_ring(&self) -> Area {
        self.plan.rx_ring
    }
    /// The TX packet buffers, `ring_len` of [`QueuePair::buffer_size`] bytes.
    pub fn tx_buffers(&self) -> Area {
        self.plan.tx_bufs
    }
    /// The RX packet buffers, one per RX descriptor, posted at bring-up.
    pub fn rx_buffers(&self) -> Area {
        self.plan.rx_bufs
    }
    /// BAR0 offset of `QTX_TAIL1(id)`.
    pub fn tx_tail_register(&self) -> u64 {
        self.tx_tail
    }
    /// BAR0 offset of `QRX_TAIL1(id)`.
    pub fn rx_tail_register(&self) -> u64 {
        self.rx_tail
    }
    /// The RX tail written at bring-up: every descriptor but one posted (`ring_len - 1`).
    pub fn initial_rx_tail(&self) -> u32 {
        u32::from(self.plan.ring_len).saturating_sub(1)
    }
    /// TX descriptors handed to the device and not yet seen done.
    pub fn tx_in_flight(&self) -> u32 {
        let len = u32::from(self.plan.ring_len).max(1);
        (self.ring.tx_next + len - self.ring.tx_clean) % len
    }
    /// RX packets the device wrote back with an error bit (dropped by `rx_burst`).
    pub fn rx_errors(&self) -> u64 {
        self.ring.rx_errors
    }
    /// Pool buffers: `2 * ring_len`, numbered `0..ring_len` over the RX area and
    /// `ring_len..2 * ring_len` over the TX area.
    pub fn pool_size(&self) -> u32 {
        2 * u32::from(self.plan.ring_len)
    }
    /// Pool buffers neither posted for RX nor in flight on TX nor held by the application.
    pub fn pool_free(&self) -> usize {
        self.ring.free.len()
    }
    /// Offset in [`QueuePair::memory`] and IOVA of pool buffer `buf`, if it exists.
    pub fn buffer(&self, buf: u32) -> Option<(u64, u64)> {
        let len = u32::from(self.plan.ring_len);
        let size = u64::from(self.plan.buf_size);
        if buf < len {
            self.plan.rx_bufs.element(u64::from(buf), size)
        } else if buf < 2 * len {
            self.plan.tx_bufs.element(u64::from(buf - len), size)
        } else {
            None
        }
    }
}

/// Clears pair `q`'s TX ring and writes its RX ring in read format, descriptor `i` pointing at
/// RX buffer `i`.
pub(crate) fn init_rings(
    mem: &SharedMemory,
    l: &QueueLayout,
    iova: u64,
    q: u16,
) -> Result<(), DmaAccessError> {
    let tx = l.tx_ring(iova, q);
    mem.write_at(tx.offset, &vec![0u8; tx.bytes as usize])?;
    let rx = l.rx_ring(iova, q);
    let bufs = l.rx_bufs(iova, q);
    let mut ring = Vec::with_capacity(rx.bytes as usize);
    for i in 0..u64::from(l.ring_len) {
        let pkt_addr = bufs.iova + i * u64::from(l.buf_size);
        ring.extend_from_slice(
            &RxDescRead {
                pkt_addr,
                hdr_addr: 0,
            }
            .encode32(),
        );
    }
    mem.write_at(rx.offset, &ring)
}

/// The MSI-X vector of queue `q` with `queue_vectors` vectors for queues: `1 + q % n`
/// (vector 0 is the admin queue's).
pub(crate) fn vector_of(q: u16, queue_vectors: u16) -> u16 {
    1 + q % queue_vectors.max(1)
}

/// CONFIG_VSI_QUEUES for every pair, as `iavf_configure_queues` fills it: legacy 32-byte RX
/// descriptors, no header split, no head write-back.
pub(crate) fn vsi_queue_config(
    vsi_id: u16,
    pairs: &[PairPlan],
    max_pkt_size: u32,
) -> VsiQueueConfigInfo {
    VsiQueueConfigInfo {
        vsi_id,
        qpair: pairs
            .iter()
            .map(|p| QueuePairInfo {
                txq: TxqInfo {
                    vsi_id,
                    queue_id: p.id,
                    ring_len: p.ring_len,
                    headwb_enabled: 0,
                    dma_ring_addr: p.tx_ring.iova,
                    dma_headwb_addr: 0,
                },
                rxq: RxqInfo {
                    vsi_id,
                    queue_id: p.id,
                    ring_len: u32::from(p.ring_len),
                    hdr_size: 0,
                    splithdr_enabled: 0,
                    databuffer_size: p.buf_size,
                    max_pkt_size,
                    crc_disable: 0,
                    rxdid: RXDID_LEGACY_1,
                    dma_ring_addr: p.rx_ring.iova,
                    rx_split_pos: RX_HSPLIT_NO_SPLIT,
                },
            })
            .collect(),
    }
}

/// The queue bitmap of the pairs on `vector`.
fn queues_on(pairs: &[PairPlan], vector: u16) -> u16 {
    pairs
        .iter()
        .filter(|p| p.vector == vector)
        // Queue ids of a VF fit the 16-bit maps (at most 16 pairs are ever granted).
        .fold(0u16, |m, p| {
            m | 1u16.checked_shl(u32::from(p.id)).unwrap_or(0)
        })
}

/// CONFIG_IRQ_MAP as Linux's `iavf_map_queues` builds it: one entry per queue vector with the
/// queues on it (RX ITR 0, TX ITR 1), then the admin vector 0 (with the queues only when there
/// is no queue vector).
pub(crate) fn irq_map(vsi_id: u16, pairs: &[PairPlan], queue_vectors: u16) -> IrqMapInfo {
    let entry = |v: u16| {
        let map = queues_on(pairs, v);
        VectorMap {
            vsi_id,
            vector_id: v,
            rxq_map: map,
            txq_map: map,
            rxitr_idx: if map != 0 { RX_ITR_INDEX } else { 0 },
            txitr_idx: if map != 0 { TX_ITR_INDEX } else { 0 },
        }
    };
    let mut vecmap: Vec<VectorMap> = (1..=queue_vectors).map(entry).collect();
    vecmap.push(entry(0));
    IrqMapInfo { vecmap }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::desc::RING_LEN_ALIGN;

    const IOVA: u64 = 0x2000_0000;

    #[test]
    fn areas_are_aligned_disjoint_and_sized() {
        let l = QueueLayout::new(3, 512, 2048);
        assert_eq!(l.total() % PAGE, 0);
        let mut spans = Vec::new();
        for q in 0..3 {
            for a in [
                l.tx_ring(IOVA, q),
                l.rx_ring(IOVA, q),
                l.rx_bufs(IOVA, q),
                l.tx_bufs(IOVA, q),
            ] {
                assert_eq!(a.offset % RING_BASE_ALIGN, 0);
                assert_eq!(a.iova, IOVA + a.offset);
                spans.push((a.offset, a.offset + a.bytes));
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?} overlap");
        }
        assert!(spans.last().is_some_and(|s| s.1 <= l.total()));
        assert_eq!(l.tx_ring(IOVA, 0).bytes, 512 * 16);
        assert_eq!(l.rx_ring(IOVA, 1).bytes, 512 * 32);
        assert_eq!(l.rx_bufs(IOVA, 2).bytes, 512 * 2048);
        assert_eq!(u32::from(l.ring_len) % RING_LEN_ALIGN, 0);
    }

    #[test]
    fn area_elements_are_bounded() {
        let a = Area {
            offset: 0x1000,
            iova: 0x9000,
            bytes: 4096,
        };
        assert_eq!(a.element(0, 2048), Some((0x1000, 0x9000)));
        assert_eq!(a.element(1, 2048), Some((0x1800, 0x9800)));
        assert_eq!(a.element(2, 2048), None);
        assert_eq!(a.element(u64::MAX, 2), None);
    }

    #[test]
    fn rx_ring_points_at_the_buffers_and_tx_ring_is_clear() {
        let l = QueueLayout::new(2, 64, 1024);
        let m = SharedMemory::memfd("q-test", l.total()).expect("memfd").0;
        let tx = l.tx_ring(IOVA, 1);
        m.write_at(tx.offset, &[0xAA; 64]).expect("dirty");
        init_rings(&m, &l, IOVA, 1).expect("init");
        let mut b = [0u8; 64];
        m.read_at(tx.offset, &mut b).expect("read");
        assert_eq!(b, [0; 64]);
        let rx = l.rx_ring(IOVA, 1);
        let bufs = l.rx_bufs(IOVA, 1);
        for i in [0u64, 1, 63] {
            let mut d = [0u8; RX_DESC32_SIZE];
            m.read_at(rx.offset + i * 32, &mut d).expect("read");
            let r = RxDescRead::decode(&d).expect("decode");
            assert_eq!(r.pkt_addr, bufs.iova + i * 1024);
            assert_eq!(r.hdr_addr, 0);
        }
        // Pair 0 untouched.
        let mut d = [0u8; RX_DESC32_SIZE];
        m.read_at(l.rx_ring(IOVA, 0).offset, &mut d).expect("read");
        assert_eq!(d, [0; 32]);
    }

    fn plans(n: u16, queue_vectors: u16) -> (QueueLayout, Vec<PairPlan>) {
        let l = QueueLayout::new(n, 512, 2048);
        let p = (0..n)
            .map(|q| {
                l.plan(
                    IOVA,
                    q,
                    vector_of(q, queue_vectors),
                    Some((4 * u64::from(q), 0x2000 + 4 * u64::from(q))),
                )
            })
            .collect();
        (l, p)
    }

    #[test]
    fn vsi_queue_config_describes_every_pair() {
        let (l, p) = plans(3, 3);
        let m = vsi_queue_config(7, &p, 1522);
        assert_eq!(m.vsi_id, 7);
        assert_eq!(m.qpair.len(), 3);
        for (q, qp) in m.qpair.iter().enumerate() {
            let q = q as u16;
            assert_eq!((qp.txq.queue_id, qp.rxq.queue_id), (q, q));
            assert_eq!((qp.txq.vsi_id, qp.rxq.vsi_id), (7, 7));
            assert_eq!(qp.txq.ring_len, 512);
            assert_eq!(qp.rxq.ring_len, 512);
            assert_eq!(qp.txq.dma_ring_addr, l.tx_ring(IOVA, q).iova);
            assert_eq!(qp.rxq.dma_ring_addr, l.rx_ring(IOVA, q).iova);
            assert_eq!(qp.rxq.databuffer_size, 2048);
            assert_eq!(qp.rxq.max_pkt_size, 1522);
            assert_eq!(qp.rxq.rxdid, RXDID_LEGACY_1);
            assert_eq!((qp.txq.headwb_enabled, qp.rxq.splithdr_enabled), (0, 0));
        }
        // The legacy size virtchnl validates: 72 + n * 64.
        assert_eq!(m.encode().len(), 72 + 3 * 64);
    }

    #[test]
    fn irq_map_puts_each_queue_on_its_vector_and_the_admin_vector_last() {
        let (_, p) = plans(5, 2);
        let m = irq_map(7, &p, 2);
        assert_eq!(m.vecmap.len(), 3);
        assert_eq!(m.vecmap[0].vector_id, 1);
        assert_eq!(m.vecmap[0].rxq_map, 0b10101);
        assert_eq!(m.vecmap[0].txq_map, 0b10101);
        assert_eq!(m.vecmap[1].vector_id, 2);
        assert_eq!(m.vecmap[1].rxq_map, 0b01010);
        assert_eq!(
            (m.vecmap[1].rxitr_idx, m.vecmap[1].txitr_idx),
            (RX_ITR_INDEX, TX_ITR_INDEX)
        );
        assert_eq!(m.vecmap[2].vector_id, 0);
        assert_eq!((m.vecmap[2].rxq_map, m.vecmap[2].txq_map), (0, 0));
        assert!(m.vecmap.iter().all(|v| v.vsi_id == 7));
        let (_, p16) = plans(16, 16);
        let m = irq_map(1, &p16, 16);
        assert_eq!(m.vecmap.len(), 17);
        assert_eq!(m.vecmap[15].rxq_map, 1 << 15);
        // No queue vector: every queue on vector 0.
        let l = QueueLayout::new(2, 64, 2048);
        let on0: Vec<PairPlan> = (0..2).map(|q| l.plan(IOVA, q, 0, None)).collect();
        let m = irq_map(1, &on0, 0);
        assert_eq!(m.vecmap.len(), 1);
        assert_eq!(
            (
                m.vecmap[0].vector_id,
                m.vecmap[0].rxq_map,
                m.vecmap[0].txq_map
            ),
            (0, 0b11, 0b11)
        );
    }

    #[test]
    fn vectors_spread_over_the_queue_vectors() {
        assert_eq!(vector_of(0, 4), 1);
        assert_eq!(vector_of(3, 4), 4);
        assert_eq!(vector_of(4, 4), 1);
        assert_eq!(vector_of(5, 0), 1);
    }
}
