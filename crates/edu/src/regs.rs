//! BAR0 register offsets and bits of the edu device.
//!
//! Offsets below [`DMA_REGS_START`] take 4-byte accesses only; from there on 4- or 8-byte
//! accesses work. Anything else (other sizes, misaligned) reads all-ones and writes nothing.

/// RO identification, [`crate::EDU_ID_REG_VALUE`].
pub const REG_ID: u64 = 0x00;
/// RW liveness check: reads return the bitwise NOT of the last value written.
pub const REG_LIVENESS: u64 = 0x04;
/// RW factorial: a write computes the factorial of the value, a read returns the result.
pub const REG_FACTORIAL: u64 = 0x08;
/// RW status: [`STATUS_COMPUTING`] (RO) and [`STATUS_IRQ_FACT`].
pub const REG_STATUS: u64 = 0x20;
/// RO interrupt status.
pub const REG_IRQ_STATUS: u64 = 0x24;
/// WO interrupt raise: ORs the value into the interrupt status and raises the interrupt.
pub const REG_IRQ_RAISE: u64 = 0x60;
/// WO interrupt acknowledge: clears the value's bits from the interrupt status.
pub const REG_IRQ_ACK: u64 = 0x64;
/// First register that also takes 8-byte accesses.
pub const DMA_REGS_START: u64 = 0x80;
/// RW DMA source address (u64).
pub const REG_DMA_SRC: u64 = 0x80;
/// RW DMA destination address (u64).
pub const REG_DMA_DST: u64 = 0x88;
/// RW DMA transfer count in bytes (u64).
pub const REG_DMA_COUNT: u64 = 0x90;
/// RW DMA command: [`DMA_CMD_START`], [`DMA_CMD_TO_RAM`], [`DMA_CMD_IRQ`].
pub const REG_DMA_CMD: u64 = 0x98;

/// Status: a factorial is being computed (never seen set: computing is synchronous).
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise [`IRQ_FACT`] when a factorial is done.
pub const STATUS_IRQ_FACT: u32 = 0x80;

/// Interrupt status bit raised after a factorial (when [`STATUS_IRQ_FACT`] is set).
pub const IRQ_FACT: u32 = 0x001;
/// Interrupt status bit raised after a DMA (when [`DMA_CMD_IRQ`] is set).
pub const IRQ_DMA: u32 = 0x100;

/// DMA command: start the transfer (cleared when it ends).
pub const DMA_CMD_START: u64 = 0x1;
/// DMA command direction: set = EDU buffer to RAM (IOVA), clear = RAM to EDU buffer.
pub const DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise [`IRQ_DMA`] when the transfer ends.
pub const DMA_CMD_IRQ: u64 = 0x4;
