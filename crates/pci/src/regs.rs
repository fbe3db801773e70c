//! Register offsets and bits of PCI configuration space: the type-0 header, the capabilities
//! this crate builds (PM, MSI, MSI-X, PCI Express) and the extended-capability header.
//!
//! Offsets are `u16` because PCI Express config space is 4096 bytes; capability-relative
//! offsets are named `*_OFF`. Values are from the PCI Local Bus 3.0, PCI PM 1.2 and PCI Express
//! base specifications (the same numbers as Linux's `pci_regs.h`).

/// Size of conventional PCI configuration space.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;
/// Size of PCI Express configuration space.
pub const PCIE_CONFIG_SPACE_SIZE: usize = 4096;

/// Offset of the vendor id (u16).
pub const PCI_VENDOR_ID: u16 = 0x00;
/// Offset of the device id (u16).
pub const PCI_DEVICE_ID: u16 = 0x02;
/// Offset of the command register (u16).
pub const PCI_COMMAND: u16 = 0x04;
/// Offset of the status register (u16).
pub const PCI_STATUS: u16 = 0x06;
/// Offset of the revision id (u8).
pub const PCI_REVISION_ID: u16 = 0x08;
/// Offset of the programming interface byte, the low byte of the 24-bit class code.
pub const PCI_CLASS_PROG: u16 = 0x09;
/// Offset of the sub-class byte.
pub const PCI_CLASS_SUB: u16 = 0x0a;
/// Offset of the base-class byte.
pub const PCI_CLASS_BASE: u16 = 0x0b;
/// Offset of the cache line size (u8, RW).
pub const PCI_CACHE_LINE_SIZE: u16 = 0x0c;
/// Offset of the latency timer (u8, RO 0 here).
pub const PCI_LATENCY_TIMER: u16 = 0x0d;
/// Offset of the header type (u8).
pub const PCI_HEADER_TYPE: u16 = 0x0e;
/// Offset of the BIST register (u8, RO 0 here: no built-in self test).
pub const PCI_BIST: u16 = 0x0f;
/// Offset of BAR0; BARn is at `PCI_BAR0 + 4 * n`.
pub const PCI_BAR0: u16 = 0x10;
/// Number of BARs in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;
/// Offset of the CardBus CIS pointer (u32, RO 0).
pub const PCI_CARDBUS_CIS: u16 = 0x28;
/// Offset of the subsystem vendor id (u16).
pub const PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Offset of the subsystem id (u16).
pub const PCI_SUBSYSTEM_ID: u16 = 0x2e;
/// Offset of the expansion ROM base address (u32).
pub const PCI_ROM_ADDRESS: u16 = 0x30;
/// Offset of the capability list pointer (u8).
pub const PCI_CAPABILITY_LIST: u16 = 0x34;
/// Offset of the interrupt line (u8, RW).
pub const PCI_INTERRUPT_LINE: u16 = 0x3c;
/// Offset of the interrupt pin (u8, RO; 1 = INTA).
pub const PCI_INTERRUPT_PIN: u16 = 0x3d;
/// Offset of Min_Gnt (u8, RO 0).
pub const PCI_MIN_GNT: u16 = 0x3e;
/// Offset of Max_Lat (u8, RO 0).
pub const PCI_MAX_LAT: u16 = 0x3f;
/// First offset after the standard header, where capabilities may start.
pub const PCI_HEADER_END: u16 = 0x40;
/// First offset of PCI Express extended configuration space (the extended capability list).
pub const PCIE_EXT_CAP_START: u16 = 0x100;

/// Command: I/O space enable.
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: parity error response.
pub const PCI_COMMAND_PARITY: u16 = 0x0040;
/// Command: SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 0x0100;
/// Command: INTx emulation disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;
/// The command bits a guest can change in the header [`crate::ConfigSpace`] builds.
pub const PCI_COMMAND_WRITABLE: u16 = PCI_COMMAND_IO
    | PCI_COMMAND_MEMORY
    | PCI_COMMAND_MASTER
    | PCI_COMMAND_PARITY
    | PCI_COMMAND_SERR
    | PCI_COMMAND_INTX_DISABLE;

/// Status: INTx asserted (device-driven, RO to the guest).
pub const PCI_STATUS_INTERRUPT: u16 = 0x0008;
/// Status: the capability list pointer is valid.
pub const PCI_STATUS_CAP_LIST: u16 = 0x0010;
/// Status: master data parity error (RW1C).
pub const PCI_STATUS_PARITY: u16 = 0x0100;
/// Status: signalled target abort (RW1C).
pub const PCI_STATUS_SIG_TARGET_ABORT: u16 = 0x0800;
/// Status: received target abort (RW1C).
pub const PCI_STATUS_REC_TARGET_ABORT: u16 = 0x1000;
/// Status: received master abort (RW1C).
pub const PCI_STATUS_REC_MASTER_ABORT: u16 = 0x2000;
/// Status: signalled system error (RW1C).
pub const PCI_STATUS_SIG_SYSTEM_ERROR: u16 = 0x4000;
/// Status: detected parity error (RW1C).
pub const PCI_STATUS_DETECTED_PARITY: u16 = 0x8000;
/// The status bits a guest clears by writing 1 (bits 8 and 11-15).
pub const PCI_STATUS_RW1C: u16 = PCI_STATUS_PARITY
    | PCI_STATUS_SIG_TARGET_ABORT
    | PCI_STATUS_REC_TARGET_ABORT
    | PCI_STATUS_REC_MASTER_ABORT
    | PCI_STATUS_SIG_SYSTEM_ERROR
    | PCI_STATUS_DETECTED_PARITY;

/// Header type 0 (a normal function).
pub const PCI_HEADER_TYPE_NORMAL: u8 = 0;

/// BAR bit 0: the BAR is in I/O space.
pub const PCI_BAR_SPACE_IO: u32 = 0x1;
/// Memory BAR type field (bits 2:1) value for a 64-bit BAR.
pub const PCI_BAR_MEM_TYPE_64: u32 = 0x4;
/// Memory BAR bit 3: prefetchable.
pub const PCI_BAR_MEM_PREFETCH: u32 = 0x8;
/// Low bits of a memory BAR that hold the type, never the address.
pub const PCI_BAR_MEM_FLAG_MASK: u32 = 0xf;
/// Low bits of an I/O BAR that hold the type, never the address.
pub const PCI_BAR_IO_FLAG_MASK: u32 = 0x3;
/// Expansion ROM BAR bit 0: address decode enable.
pub const PCI_ROM_ADDRESS_ENABLE: u32 = 0x1;
/// Expansion ROM BAR: the address bits (31:11).
pub const PCI_ROM_ADDRESS_MASK: u32 = 0xffff_f800;

/// Interrupt pin value for INTA.
pub const PCI_INTERRUPT_PIN_INTA: u8 = 1;

/// Capability id: power management.
pub const PCI_CAP_ID_PM: u8 = 0x01;
/// Capability id: MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Capability id: vendor specific.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Capability id: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Capability id: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

/// Capability header: offset of the next pointer (u8).
pub const PCI_CAP_NEXT_OFF: u16 = 1;

/// PM: offset of the PM capabilities register (u16).
pub const PCI_PM_PMC_OFF: u16 = 2;
/// PM: offset of the control/status register PMCSR (u16).
pub const PCI_PM_CTRL_OFF: u16 = 4;
/// PM: length of the capability.
pub const PCI_PM_CAP_LEN: u16 = 8;
/// PMC: version field value for PM 1.2.
pub const PCI_PM_CAP_VER_1_2: u16 = 0x0003;
/// PMC: PME support field (bits 15:11), one bit per state D0, D1, D2, D3hot, D3cold.
pub const PCI_PM_CAP_PME_MASK: u16 = 0xf800;
/// PMCSR: power state field (bits 1:0).
pub const PCI_PM_CTRL_STATE_MASK: u16 = 0x0003;
/// PMCSR: No_Soft_Reset (bit 3): D3hot to D0 keeps the function's state.
pub const PCI_PM_CTRL_NO_SOFT_RESET: u16 = 0x0008;
/// PMCSR: PME_En (bit 8).
pub const PCI_PM_CTRL_PME_ENABLE: u16 = 0x0100;
/// PMCSR: PME_Status (bit 15, RW1C).
pub const PCI_PM_CTRL_PME_STATUS: u16 = 0x8000;

/// MSI: offset of message control (u16).
pub const PCI_MSI_FLAGS_OFF: u16 = 2;
/// MSI: offset of the message address (low dword).
pub const PCI_MSI_ADDRESS_LO_OFF: u16 = 4;
/// MSI: offset of the high address dword (64-bit capability only).
pub const PCI_MSI_ADDRESS_HI_OFF: u16 = 8;
/// MSI: offset of the message data in a 32-bit capability.
pub const PCI_MSI_DATA_32_OFF: u16 = 8;
/// MSI: offset of the message data in a 64-bit capability.
pub const PCI_MSI_DATA_64_OFF: u16 = 0x0c;
/// MSI control: MSI enable.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 0x0001;
/// MSI control: multiple message capable (log2 of vectors), bits 3:1.
pub const PCI_MSI_FLAGS_QMASK: u16 = 0x000e;
/// MSI control: multiple message enable (log2 of vectors), bits 6:4.
pub const PCI_MSI_FLAGS_QSIZE: u16 = 0x0070;
/// MSI control: 64-bit address capable.
pub const PCI_MSI_FLAGS_64BIT: u16 = 0x0080;
/// MSI control: per-vector masking capable.
pub const PCI_MSI_FLAGS_MASKBIT: u16 = 0x0100;

/// MSI-X: offset of message control (u16).
pub const PCI_MSIX_FLAGS_OFF: u16 = 2;
/// MSI-X: offset of the table offset/BIR register (u32).
pub const PCI_MSIX_TABLE_OFF: u16 = 4;
/// MSI-X: offset of the PBA offset/BIR register (u32).
pub const PCI_MSIX_PBA_OFF: u16 = 8;
/// MSI-X: length of the capability.
pub const PCI_MSIX_CAP_LEN: u16 = 12;
/// MSI-X control: table size minus one (bits 10:0).
pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// MSI-X control: function mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 0x4000;
/// MSI-X control: MSI-X enable.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// MSI-X table/PBA register: BAR indicator (bits 2:0).
pub const PCI_MSIX_BIR_MASK: u32 = 0x7;
/// Size of one MSI-X table entry.
pub const PCI_MSIX_ENTRY_SIZE: u64 = 16;
/// MSI-X entry: offset of the low address dword.
pub const PCI_MSIX_ENTRY_ADDR_LO: u64 = 0;
/// MSI-X entry: offset of the high address dword.
pub const PCI_MSIX_ENTRY_ADDR_HI: u64 = 4;
/// MSI-X entry: offset of the message data.
pub const PCI_MSIX_ENTRY_DATA: u64 = 8;
/// MSI-X entry: offset of vector control.
pub const PCI_MSIX_ENTRY_VECTOR_CTRL: u64 = 12;
/// MSI-X vector control: the vector is masked (bit 0).
pub const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 0x1;
/// Most MSI-X vectors a function can have.
pub const PCI_MSIX_MAX_VECTORS: u16 = 2048;

/// PCIe capability: offset of the PCI Express capabilities register (u16).
pub const PCI_EXP_FLAGS_OFF: u16 = 0x02;
/// PCIe: offset of device capabilities (u32).
pub const PCI_EXP_DEVCAP_OFF: u16 = 0x04;
/// PCIe: offset of device control (u16).
pub const PCI_EXP_DEVCTL_OFF: u16 = 0x08;
/// PCIe: offset of device status (u16).
pub const PCI_EXP_DEVSTA_OFF: u16 = 0x0a;
/// PCIe: offset of link capabilities (u32).
pub const PCI_EXP_LNKCAP_OFF: u16 = 0x0c;
/// PCIe: offset of link control (u16).
pub const PCI_EXP_LNKCTL_OFF: u16 = 0x10;
/// PCIe: offset of link status (u16).
pub const PCI_EXP_LNKSTA_OFF: u16 = 0x12;
/// PCIe: offset of device capabilities 2 (u32).
pub const PCI_EXP_DEVCAP2_OFF: u16 = 0x24;
/// PCIe: offset of device control 2 (u16).
pub const PCI_EXP_DEVCTL2_OFF: u16 = 0x28;
/// PCIe: offset of link capabilities 2 (u32).
pub const PCI_EXP_LNKCAP2_OFF: u16 = 0x2c;
/// PCIe: offset of link control 2 (u16).
pub const PCI_EXP_LNKCTL2_OFF: u16 = 0x30;
/// PCIe: offset of link status 2 (u16).
pub const PCI_EXP_LNKSTA2_OFF: u16 = 0x32;
/// PCIe: length of a version-2 capability (through slot status 2).
pub const PCI_EXP_CAP_V2_LEN: u16 = 0x3c;
/// PCIe capabilities register: capability version 2.
pub const PCI_EXP_FLAGS_VERSION_2: u16 = 0x0002;
/// PCIe capabilities register: device/port type field (bits 7:4).
pub const PCI_EXP_FLAGS_TYPE_MASK: u16 = 0x00f0;
/// Device capabilities: Max_Payload_Size supported (bits 2:0).
pub const PCI_EXP_DEVCAP_PAYLOAD: u32 = 0x0000_0007;
/// Device capabilities: extended (8-bit) tag field supported.
pub const PCI_EXP_DEVCAP_EXT_TAG: u32 = 0x0000_0020;
/// Device capabilities: role-based error reporting.
pub const PCI_EXP_DEVCAP_RBER: u32 = 0x0000_8000;
/// Device control: correctable error reporting enable.
pub const PCI_EXP_DEVCTL_CERE: u16 = 0x0001;
/// Device control: non-fatal error reporting enable.
pub const PCI_EXP_DEVCTL_NFERE: u16 = 0x0002;
/// Device control: fatal error reporting enable.
pub const PCI_EXP_DEVCTL_FERE: u16 = 0x0004;
/// Device control: unsupported request reporting enable.
pub const PCI_EXP_DEVCTL_URRE: u16 = 0x0008;
/// Device control: enable relaxed ordering.
pub const PCI_EXP_DEVCTL_RELAX_EN: u16 = 0x0010;
/// Device control: Max_Payload_Size (bits 7:5).
pub const PCI_EXP_DEVCTL_PAYLOAD: u16 = 0x00e0;
/// Device control: extended tag field enable.
pub const PCI_EXP_DEVCTL_EXT_TAG: u16 = 0x0100;
/// Device control: enable no snoop.
pub const PCI_EXP_DEVCTL_NOSNOOP_EN: u16 = 0x0800;
/// Device control: Max_Read_Request_Size (bits 14:12).
pub const PCI_EXP_DEVCTL_READRQ: u16 = 0x7000;
/// Device control: Max_Read_Request_Size of 512 bytes, the power-on value.
pub const PCI_EXP_DEVCTL_READRQ_512B: u16 = 0x2000;
/// The device control bits a guest can change in the capability this crate builds.
pub const PCI_EXP_DEVCTL_WRITABLE: u16 = PCI_EXP_DEVCTL_CERE
    | PCI_EXP_DEVCTL_NFERE
    | PCI_EXP_DEVCTL_FERE
    | PCI_EXP_DEVCTL_URRE
    | PCI_EXP_DEVCTL_RELAX_EN
    | PCI_EXP_DEVCTL_PAYLOAD
    | PCI_EXP_DEVCTL_EXT_TAG
    | PCI_EXP_DEVCTL_NOSNOOP_EN
    | PCI_EXP_DEVCTL_READRQ;
/// Device status: the four error-detected bits (RW1C).
pub const PCI_EXP_DEVSTA_ERRORS: u16 = 0x000f;
/// Link capabilities: max link speed (bits 3:0); 1 = 2.5 GT/s.
pub const PCI_EXP_LNKCAP_SLS_2_5GB: u32 = 0x0000_0001;
/// Link capabilities: max link width x1 (bits 9:4).
pub const PCI_EXP_LNKCAP_MLW_X1: u32 = 0x0000_0010;
/// Link control: read completion boundary.
pub const PCI_EXP_LNKCTL_RCB: u16 = 0x0008;
/// Link control: common clock configuration.
pub const PCI_EXP_LNKCTL_CCC: u16 = 0x0040;
/// Link control: extended synch.
pub const PCI_EXP_LNKCTL_ES: u16 = 0x0080;
/// Link status: current link speed 2.5 GT/s (bits 3:0).
pub const PCI_EXP_LNKSTA_CLS_2_5GB: u16 = 0x0001;
/// Link status: negotiated link width x1 (bits 9:4).
pub const PCI_EXP_LNKSTA_NLW_X1: u16 = 0x0010;
/// Link capabilities 2: supported link speeds vector, 2.5 GT/s (bit 1).
pub const PCI_EXP_LNKCAP2_SLS_2_5GB: u32 = 0x0000_0002;
/// Link control 2: target link speed 2.5 GT/s.
pub const PCI_EXP_LNKCTL2_TLS_2_5GT: u16 = 0x0001;

/// Extended capability header: bits 15:0 id, 19:16 version, 31:20 next offset.
pub const PCI_EXT_CAP_NEXT_SHIFT: u32 = 20;
/// Extended capability header: version field shift.
pub const PCI_EXT_CAP_VER_SHIFT: u32 = 16;
/// Extended capability id: device serial number.
pub const PCI_EXT_CAP_ID_DSN: u16 = 0x0003;
/// Extended capability id: vendor specific.
pub const PCI_EXT_CAP_ID_VNDR: u16 = 0x000b;
