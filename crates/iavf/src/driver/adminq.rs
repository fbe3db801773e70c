//! The driver's half of the admin queue: both rings and their buffers in one block of DMA memory,
//! commands placed on the ATQ as `iavf_aq_send_msg_to_pf` builds them, and ARQ entries posted,
//! taken and re-armed as `iavf_clean_arq_element` does.
//!
//! The ring functions work on a [`SharedMemory`] and the IOVA it is mapped at, so they can be
//! exercised without a device. Descriptor flags are read with an atomic load (the device writes
//! the flags word last), everything else is copied in and out.

use std::sync::atomic::Ordering;

use emudev_dma::{DmaAccessError, SharedMemory};

use crate::spec::aq::{self, AqDesc};

/// Where the rings and buffers sit inside the admin-queue memory block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AqLayout {
    /// Entries per ring.
    pub(crate) len: u16,
    /// Bytes per buffer.
    pub(crate) buf_size: u16,
    atq_ring: u64,
    arq_ring: u64,
    atq_bufs: u64,
    arq_bufs: u64,
    /// Bytes of the whole block (a multiple of 4 KiB).
    pub(crate) total: u64,
}

fn page_align(x: u64) -> u64 {
    x.div_ceil(aq::DESC_ALIGNMENT) * aq::DESC_ALIGNMENT
}

impl AqLayout {
    /// Rings of `len` entries at 4 KiB-aligned offsets (`IAVF_ADMINQ_DESC_ALIGNMENT`), then
    /// `len` ATQ buffers and `len` ARQ buffers of `buf_size` bytes.
    pub(crate) fn new(len: u16, buf_size: u16) -> Self {
        let ring = page_align(u64::from(len) * aq::DESC_SIZE as u64);
        let bufs = page_align(u64::from(len) * u64::from(buf_size));
        AqLayout {
            len,
            buf_size,
            atq_ring: 0,
            arq_ring: ring,
            atq_bufs: 2 * ring,
            arq_bufs: 2 * ring + bufs,
            total: 2 * ring + 2 * bufs,
        }
    }

    /// Offset of the ATQ ring.
    pub(crate) fn atq_ring(&self) -> u64 {
        self.atq_ring
    }

    /// Offset of the ARQ ring.
    pub(crate) fn arq_ring(&self) -> u64 {
        self.arq_ring
    }

    fn atq_desc(&self, i: u16) -> u64 {
        self.atq_ring + u64::from(i) * aq::DESC_SIZE as u64
    }

    fn arq_desc(&self, i: u16) -> u64 {
        self.arq_ring + u64::from(i) * aq::DESC_SIZE as u64
    }

    fn atq_buf(&self, i: u16) -> u64 {
        self.atq_bufs + u64::from(i) * u64::from(self.buf_size)
    }

    fn arq_buf(&self, i: u16) -> u64 {
        self.arq_bufs + u64::from(i) * u64::from(self.buf_size)
    }

    /// The ring index after `i`.
    pub(crate) fn next(&self, i: u16) -> u16 {
        if i + 1 >= self.len {
            0
        } else {
            i + 1
        }
    }
}

/// A message taken from the ARQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArqMessage {
    /// The descriptor's opcode (0x0802 for virtchnl).
    pub(crate) opcode: u16,
    /// The virtchnl op (`cookie_high`).
    pub(crate) op: u32,
    /// The virtchnl status (`cookie_low`).
    pub(crate) status: i32,
    /// The descriptor's flags.
    pub(crate) flags: u16,
    /// The descriptor's AQ return code.
    pub(crate) retval: u16,
    /// The message, `min(datalen, buffer size)` bytes.
    pub(crate) body: Vec<u8>,
}

/// Zeroes both rings and posts every ARQ entry (`iavf_alloc_arq_bufs`): `BUF` (+`LB`), the
/// buffer size in `datalen`, the buffer's IOVA.
pub(crate) fn init_rings(
    mem: &SharedMemory,
    l: &AqLayout,
    iova: u64,
) -> Result<(), DmaAccessError> {
    let ring_bytes = usize::from(l.len) * aq::DESC_SIZE;
    mem.write_at(l.atq_ring, &vec![0u8; ring_bytes])?;
    let mut arq = Vec::with_capacity(ring_bytes);
    for i in 0..l.len {
        arq.extend_from_slice(&AqDesc::posted_receive(l.buf_size, iova + l.arq_buf(i)).encode());
    }
    mem.write_at(l.arq_ring, &arq)
}

/// Places a command for `v_op` with body `msg` in ATQ slot `ntu` (its buffer first, then the
/// descriptor with `DD` clear). The caller rings `ATQT`.
pub(crate) fn put_command(
    mem: &SharedMemory,
    l: &AqLayout,
    iova: u64,
    ntu: u16,
    v_op: u32,
    msg: &[u8],
) -> Result<AqDesc, DmaAccessError> {
    // The caller checked msg.len() <= buf_size (a u16).
    let len = msg.len().min(usize::from(l.buf_size)) as u16;
    if len > 0 {
        mem.write_at(l.atq_buf(ntu), &msg[..usize::from(len)])?;
    }
    let desc = AqDesc::send_to_pf(v_op, len, iova + l.atq_buf(ntu));
    mem.write_at(l.atq_desc(ntu), &desc.encode())?;
    Ok(desc)
}

fn flags_at(mem: &SharedMemory, offset: u64) -> Result<u16, DmaAccessError> {
    Ok(u16::from_le(mem.load_u16(offset, Ordering::Acquire)?))
}

fn desc_at(mem: &SharedMemory, offset: u64) -> Result<AqDesc, DmaAccessError> {
    let mut raw = [0u8; aq::DESC_SIZE];
    mem.read_at(offset, &mut raw)?;
    Ok(AqDesc::from_bytes(&raw))
}

/// The written-back descriptor of ATQ slot `ntu` once the device set `DD`.
pub(crate) fn command_done(
    mem: &SharedMemory,
    l: &AqLayout,
    ntu: u16,
) -> Result<Option<AqDesc>, DmaAccessError> {
    let at = l.atq_desc(ntu);
    if flags_at(mem, at)? & aq::FLAG_DD == 0 {
        return Ok(None);
    }
    desc_at(mem, at).map(Some)
}

/// Takes the message in ARQ slot `ntc` if the device wrote one (`DD`), and re-arms the slot.
/// The caller advances `ntc` and hands the slot back with `ARQT`.
pub(crate) fn take_message(
    mem: &SharedMemory,
    l: &AqLayout,
    iova: u64,
    ntc: u16,
) -> Result<Option<ArqMessage>, DmaAccessError> {
    let at = l.arq_desc(ntc);
    if flags_at(mem, at)? & aq::FLAG_DD == 0 {
        return Ok(None);
    }
    let d = desc_at(mem, at)?;
    let len = usize::from(d.datalen.min(l.buf_size));
    let mut body = vec![0u8; len];
    if len > 0 {
        mem.read_at(l.arq_buf(ntc), &mut body)?;
    }
    // Re-arm as posted (the device may have rewritten the address; put ours back).
    mem.write_at(
        at,
        &AqDesc::posted_receive(l.buf_size, iova + l.arq_buf(ntc)).encode(),
    )?;
    Ok(Some(ArqMessage {
        opcode: d.opcode,
        op: d.cookie_high,
        status: d.cookie_low as i32,
        flags: d.flags,
        retval: d.retval,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::virtchnl::{VirtchnlOp, VirtchnlStatus};

    const IOVA: u64 = 0x4000_0000;

    fn mem(l: &AqLayout) -> SharedMemory {
        SharedMemory::memfd("aq-test", l.total).expect("memfd").0
    }

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let l = AqLayout::new(32, 4096);
        assert_eq!(l.atq_ring(), 0);
        assert_eq!(l.arq_ring(), 4096);
        assert_eq!(l.atq_buf(0), 8192);
        assert_eq!(l.arq_buf(0), 8192 + 32 * 4096);
        assert_eq!(l.total, 8192 + 64 * 4096);
        assert_eq!(l.total % 4096, 0);
        assert!(l.arq_buf(31) + 4096 <= l.total);
        let odd = AqLayout::new(3, 100);
        assert_eq!(odd.total % 4096, 0);
        assert!(odd.arq_buf(2) + 100 <= odd.total);
        assert!(odd.atq_buf(2) + 100 <= odd.arq_buf(0));
        assert_eq!(odd.next(0), 1);
        assert_eq!(odd.next(2), 0);
    }

    #[test]
    fn rings_start_empty_with_every_arq_entry_posted() {
        let l = AqLayout::new(8, 4096);
        let m = mem(&l);
        m.write_at(l.atq_desc(3), &[0xFF; 32]).expect("dirty");
        init_rings(&m, &l, IOVA).expect("init");
        assert_eq!(command_done(&m, &l, 3).expect("access"), None);
        for i in 0..8 {
            let d = desc_at(&m, l.arq_desc(i)).expect("read");
            assert_eq!(d.flags, aq::FLAG_BUF | aq::FLAG_LB);
            assert_eq!(d.datalen, 4096);
            assert_eq!(d.buffer_addr(), IOVA + l.arq_buf(i));
            assert_eq!(take_message(&m, &l, IOVA, i).expect("access"), None);
        }
    }

    #[test]
    fn commands_carry_the_op_the_buffer_and_the_flags() {
        let l = AqLayout::new(4, 4096);
        let m = mem(&l);
        init_rings(&m, &l, IOVA).expect("init");
        let body: Vec<u8> = (0..600u16).map(|i| i as u8).collect();
        let d =
            put_command(&m, &l, IOVA, 2, VirtchnlOp::ConfigVsiQueues.raw(), &body).expect("put");
        assert_eq!(d.opcode, aq::OPC_SEND_MSG_TO_PF);
        assert_eq!(
            d.flags,
            aq::FLAG_SI | aq::FLAG_BUF | aq::FLAG_RD | aq::FLAG_LB
        );
        assert_eq!(d.cookie_high, 6);
        assert_eq!(d.datalen, 600);
        assert_eq!(d.buffer_addr(), IOVA + l.atq_buf(2));
        assert_eq!(desc_at(&m, l.atq_desc(2)).expect("access"), d);
        let mut back = vec![0u8; 600];
        m.read_at(l.atq_buf(2), &mut back).expect("read");
        assert_eq!(back, body);
        // Not done until the device sets DD.
        assert_eq!(command_done(&m, &l, 2).expect("access"), None);
        let mut wb = d;
        wb.flags |= aq::FLAG_DD | aq::FLAG_CMP;
        m.write_at(l.atq_desc(2), &wb.encode()).expect("write back");
        assert_eq!(command_done(&m, &l, 2).expect("access"), Some(wb));
        // No body: no buffer flags, no address.
        let e = put_command(&m, &l, IOVA, 0, VirtchnlOp::ResetVf.raw(), &[]).expect("put");
        assert_eq!(e.flags, aq::FLAG_SI);
        assert_eq!(e.buffer_addr(), 0);
    }

    #[test]
    fn taking_a_message_copies_it_and_rearms_the_slot() {
        let l = AqLayout::new(4, 512);
        let m = mem(&l);
        init_rings(&m, &l, IOVA).expect("init");
        // What a device writes: the reply in the buffer, then the descriptor.
        m.write_at(l.arq_buf(1), &[1, 2, 3, 4, 5]).expect("body");
        let reply = AqDesc {
            flags: aq::FLAG_DD | aq::FLAG_CMP | aq::FLAG_BUF,
            opcode: aq::OPC_SEND_MSG_TO_VF,
            datalen: 5,
            retval: 0,
            cookie_high: VirtchnlOp::GetStats.raw(),
            cookie_low: VirtchnlStatus::ErrParam.to_cookie(),
            addr_high: 0,
            addr_low: 0,
            ..Default::default()
        };
        m.write_at(l.arq_desc(1), &reply.encode()).expect("desc");
        assert_eq!(take_message(&m, &l, IOVA, 0).expect("access"), None);
        let msg = take_message(&m, &l, IOVA, 1)
            .expect("read")
            .expect("a message");
        assert_eq!(msg.opcode, aq::OPC_SEND_MSG_TO_VF);
        assert_eq!(msg.op, 15);
        assert_eq!(msg.status, -5);
        assert_eq!(msg.body, vec![1, 2, 3, 4, 5]);
        // Re-armed: posted again, with our buffer address.
        let d = desc_at(&m, l.arq_desc(1)).expect("read");
        assert_eq!(d, AqDesc::posted_receive(512, IOVA + l.arq_buf(1)));
        assert_eq!(take_message(&m, &l, IOVA, 1).expect("access"), None);
    }

    #[test]
    fn an_overlong_datalen_is_clamped_to_the_buffer() {
        let l = AqLayout::new(2, 64);
        let m = mem(&l);
        init_rings(&m, &l, IOVA).expect("init");
        let bad = AqDesc {
            flags: aq::FLAG_DD | aq::FLAG_ERR,
            opcode: aq::OPC_SEND_MSG_TO_VF,
            datalen: 60_000,
            retval: aq::rc::EFBIG,
            cookie_high: 3,
            ..Default::default()
        };
        m.write_at(l.arq_desc(0), &bad.encode()).expect("desc");
        let msg = take_message(&m, &l, IOVA, 0)
            .expect("read")
            .expect("a message");
        assert_eq!(msg.body.len(), 64);
        assert_eq!(msg.retval, aq::rc::EFBIG);
        assert_ne!(msg.flags & aq::FLAG_ERR, 0);
    }
}
