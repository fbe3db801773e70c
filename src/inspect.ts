/**
 * `emudev inspect`: `lspci -vv` for vfio-user.
 *
 * {@link inspect} connects to any vfio-user server, reads the device info,
 * the region and IRQ info and PCI config space (region 7), and nothing else:
 * it never writes to the device (BAR sizes come from the region info, not
 * from writing all-ones into the BARs). Everything it decodes is done by pure
 * functions over plain data ({@link decodeConfig} over a config space
 * `Buffer`), so a hostile server's bytes can be unit-tested: every read is
 * bounds-checked and the capability walks are bounded and loop-checked.
 *
 * {@link formatReport} renders a report as aligned text and
 * {@link reportToJson} as one JSON object (bigints become numbers when they
 * are exact, decimal strings otherwise).
 */
import { native } from './native'
import type { RegionDesc } from '../index.js'

// ---------------------------------------------------------------- names

/** Region names by vfio-user region index. */
const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA']
/** IRQ index names. */
const IRQ_NAMES = ['INTX', 'MSI', 'MSIX', 'ERR', 'REQ']
/** The config space region. */
export const CONFIG_REGION = 7
/** How much config space inspect reads at most (PCI Express: 4 KiB). */
export const CONFIG_MAX = 4096
/** Config space is read in chunks of this size. */
const CONFIG_CHUNK = 256
/** IRQ indexes asked about at most, whatever the server claims. */
export const IRQ_MAX = 16

/** `VFIO_DEVICE_FLAGS_*`. */
const DEVICE_FLAGS: Array<[number, string]> = [
  [1 << 0, 'RESET'],
  [1 << 1, 'PCI'],
  [1 << 2, 'PLATFORM'],
  [1 << 3, 'AMBA'],
  [1 << 4, 'CCW'],
  [1 << 5, 'AP'],
]
/** `VFIO_REGION_INFO_FLAG_*`. */
const REGION_FLAGS: Array<[number, string]> = [
  [1 << 0, 'R'],
  [1 << 1, 'W'],
  [1 << 2, 'MMAP'],
  [1 << 3, 'CAPS'],
]
/** `VFIO_IRQ_INFO_*`. */
const IRQ_FLAGS: Array<[number, string]> = [
  [1 << 0, 'EVENTFD'],
  [1 << 1, 'MASKABLE'],
  [1 << 2, 'AUTOMASKED'],
  [1 << 3, 'NORESIZE'],
]
/** Command register bits. */
const COMMAND_BITS: Array<[number, string]> = [
  [1 << 0, 'I/O'],
  [1 << 1, 'Mem'],
  [1 << 2, 'BusMaster'],
  [1 << 3, 'SpecCycle'],
  [1 << 4, 'MemWINV'],
  [1 << 5, 'VGASnoop'],
  [1 << 6, 'ParErr'],
  [1 << 8, 'SERR'],
  [1 << 9, 'FastB2B'],
  [1 << 10, 'DisINTx'],
]
/** Status register bits (DEVSEL timing, bits 9-10, is decoded apart). */
const STATUS_BITS: Array<[number, string]> = [
  [1 << 3, 'INTx'],
  [1 << 4, 'Cap'],
  [1 << 5, '66MHz'],
  [1 << 7, 'FastB2B'],
  [1 << 8, 'ParErr'],
  [1 << 11, '>TAbort'],
  [1 << 12, '<TAbort'],
  [1 << 13, '<MAbort'],
  [1 << 14, '>SERR'],
  [1 << 15, '<PERR'],
]

/** Vendors whose names we know. */
const VENDORS: Record<number, string> = {
  0x1234: 'QEMU',
  0x1af4: 'Red Hat (virtio)',
  0x1b36: 'Red Hat (QEMU)',
  0x8086: 'Intel',
  0x494f: 'ACCES I/O',
}
/** Devices whose names we know, by `vendor << 16 | device`. */
const DEVICES: Record<number, string> = {
  [0x1234_11e8]: 'edu',
  [0x8086_1889]: 'Ethernet Adaptive Virtual Function (AVF)',
  [0x494f_0dc8]: 'PCI-IDIO-16',
}
/** Base class names. */
const CLASSES: Record<number, string> = {
  0x00: 'Unclassified device',
  0x01: 'Mass storage controller',
  0x02: 'Network controller',
  0x03: 'Display controller',
  0x04: 'Multimedia controller',
  0x05: 'Memory controller',
  0x06: 'Bridge',
  0x07: 'Communication controller',
  0x08: 'Generic system peripheral',
  0x09: 'Input device controller',
  0x0a: 'Docking station',
  0x0b: 'Processor',
  0x0c: 'Serial bus controller',
  0x0d: 'Wireless controller',
  0x0e: 'Intelligent controller',
  0x0f: 'Satellite communications controller',
  0x10: 'Encryption controller',
  0x11: 'Signal processing controller',
  0x12: 'Processing accelerators',
  0x13: 'Non-Essential Instrumentation',
  0xff: 'Unassigned class',
}
/** Sub-class names, by `base << 8 | sub`. */
const SUBCLASSES: Record<number, string> = {
  0x0000: 'Non-VGA unclassified device',
  0x0001: 'VGA compatible unclassified device',
  0x0106: 'SATA controller',
  0x0108: 'Non-Volatile memory controller',
  0x0200: 'Ethernet controller',
  0x0280: 'Network controller',
  0x0300: 'VGA compatible controller',
  0x0600: 'Host bridge',
  0x0604: 'PCI bridge',
  0x0c03: 'USB controller',
  0x1100: 'DPIO module',
  0x1180: 'Signal processing controller',
}
/** Capability names by id. */
const CAP_NAMES: Record<number, string> = {
  0x01: 'Power Management',
  0x02: 'AGP',
  0x03: 'Vital Product Data',
  0x04: 'Slot Identification',
  0x05: 'MSI',
  0x06: 'CompactPCI Hot Swap',
  0x07: 'PCI-X',
  0x08: 'HyperTransport',
  0x09: 'Vendor Specific',
  0x0a: 'Debug port',
  0x0b: 'CompactPCI Central Resource Control',
  0x0c: 'PCI Hot-Plug',
  0x0d: 'Bridge Subsystem Vendor ID',
  0x0e: 'AGP 8x',
  0x0f: 'Secure Device',
  0x10: 'Express',
  0x11: 'MSI-X',
  0x12: 'SATA',
  0x13: 'Advanced Features',
  0x14: 'Enhanced Allocation',
  0x15: 'Flattening Portal Bridge',
}
/** Extended capability names by id. */
const EXT_CAP_NAMES: Record<number, string> = {
  0x0001: 'Advanced Error Reporting',
  0x0002: 'Virtual Channel',
  0x0003: 'Device Serial Number',
  0x0004: 'Power Budgeting',
  0x000b: 'Vendor Specific',
  0x000d: 'Access Control Services',
  0x000e: 'Alternative Routing-ID Interpretation',
  0x000f: 'Address Translation Service',
  0x0010: 'Single Root I/O Virtualization',
  0x0013: 'Page Request Interface',
  0x0015: 'Resizable BAR',
  0x0017: 'TPH Requester',
  0x0018: 'Latency Tolerance Reporting',
  0x0019: 'Secondary PCI Express',
  0x001b: 'Process Address Space ID',
  0x001e: 'L1 PM Substates',
  0x0025: 'Data Link Feature',
  0x0026: 'Physical Layer 16.0 GT/s',
}
/** PCI Express device/port types. */
const EXPRESS_TYPES: Record<number, string> = {
  0x0: 'Endpoint',
  0x1: 'Legacy Endpoint',
  0x4: 'Root Port',
  0x5: 'Upstream Port',
  0x6: 'Downstream Port',
  0x7: 'PCI-Express to PCI/PCI-X Bridge',
  0x8: 'PCI/PCI-X to PCI-Express Bridge',
  0x9: 'Root Complex Integrated Endpoint',
  0xa: 'Root Complex Event Collector',
}
/** Link speeds by the encoding of the link capability/status registers. */
const LINK_SPEEDS: Record<number, string> = { 1: '2.5GT/s', 2: '5GT/s', 3: '8GT/s', 4: '16GT/s', 5: '32GT/s', 6: '64GT/s' }
/** PM power states. */
const POWER_STATES = ['D0', 'D1', 'D2', 'D3hot']

/** The names of the set bits of `value` that `table` knows, in table order. */
export function flagNames(value: number, table: Array<[number, string]>): string[] {
  return table.filter(([bit]) => (value & bit) !== 0).map(([, name]) => name)
}

/** `VFIO_DEVICE_FLAGS_*` by name (`['RESET', 'PCI']`). */
export function deviceFlagNames(flags: number): string[] {
  return flagNames(flags, DEVICE_FLAGS)
}

/** `VFIO_REGION_INFO_FLAG_*` by name (`['R', 'W', 'MMAP']`). */
export function regionFlagNames(flags: number): string[] {
  return flagNames(flags, REGION_FLAGS)
}

/** `VFIO_IRQ_INFO_*` by name (`['EVENTFD', 'MASKABLE']`). */
export function irqFlagNames(flags: number): string[] {
  return flagNames(flags, IRQ_FLAGS)
}

/** A region's name: `BAR0`..`BAR5`, `ROM`, `CONFIG`, `VGA`, or `#<index>` past those. */
export function regionName(index: number): string {
  return REGION_NAMES[index] ?? `#${index}`
}

/** An IRQ index's name: `INTX`, `MSI`, `MSIX`, `ERR`, `REQ`, or `#<index>` past those. */
export function irqName(index: number): string {
  return IRQ_NAMES[index] ?? `#${index}`
}

/** The vendor's name, if known. */
export function vendorName(vendorId: number): string | undefined {
  return VENDORS[vendorId]
}

/** The device's name, if known. */
export function deviceName(vendorId: number, deviceId: number): string | undefined {
  return DEVICES[vendorId * 0x10000 + deviceId]
}

/** The class code's most specific name we know (sub-class, else base class). */
export function className(classCode: number): string {
  const base = (classCode >>> 16) & 0xff
  const sub = (classCode >>> 8) & 0xff
  return SUBCLASSES[(base << 8) | sub] ?? CLASSES[base] ?? `Unknown class ${hex(base, 2)}`
}

// ---------------------------------------------------------------- formatting helpers

function hex(value: number | bigint, digits: number): string {
  return value.toString(16).padStart(digits, '0')
}

/** `0x` and at least `digits` hex digits. */
function hx(value: number | bigint, digits = 0): string {
  return `0x${hex(value, digits)}`
}

/** A size in the largest binary unit that divides it (`1 MiB`, `4 KiB`, `300 B`). */
export function formatSize(size: bigint | number): string {
  let n = BigInt(size)
  if (n === 0n) return '0'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB']
  let unit = 0
  while (unit < units.length - 1 && n % 1024n === 0n) {
    n /= 1024n
    unit += 1
  }
  return `${n} ${units[unit] ?? 'B'}`
}

function plusMinus(name: string, on: boolean): string {
  return `${name}${on ? '+' : '-'}`
}

// ---------------------------------------------------------------- config space decoding

/** One BAR as config space and the region info describe it. */
export interface BarInfo {
  /** BAR slot (0-5). */
  index: number
  /** `io`, `mem32`, `mem64`, `mem1m` (legacy below-1-MiB type) or `reserved` (memory type 3). */
  kind: 'io' | 'mem32' | 'mem64' | 'mem1m' | 'reserved'
  /** Memory BAR: prefetchable. */
  prefetchable: boolean
  /** The address programmed (64 bits for `mem64`). */
  address: bigint
  /** Size from the region info (`null`: unknown, or the region is absent). */
  size: bigint | null
  /** The raw register (the low dword for `mem64`). */
  raw: number
}

/** The expansion ROM BAR. */
export interface RomInfo {
  /** Address programmed. */
  address: number
  /** Enable bit. */
  enabled: boolean
  /** Size from the region info (`null`: unknown or absent). */
  size: bigint | null
}

/** One capability of the list at 0x34 (or of the extended list at 0x100). */
export interface CapabilityInfo {
  /** Offset in config space. */
  offset: number
  /** Capability id (8 bits; 16 bits for an extended one). */
  id: number
  /** Its name (`MSI`, `MSI-X`, `Express`, ..., `Unknown`). */
  name: string
  /** Decoded fields (`{}` for capabilities decoded by name only). */
  fields: Record<string, number | boolean | string>
  /** One human-readable line of its fields (may be empty). */
  summary: string
}

/** Config space, decoded. */
export interface ConfigInfo {
  /** Bytes decoded. */
  size: number
  vendorId: number
  deviceId: number
  /** Known vendor name. */
  vendorName: string | null
  /** Known device name. */
  deviceName: string | null
  command: number
  /** Names of the command bits set. */
  commandBits: string[]
  status: number
  /** Names of the status bits set. */
  statusBits: string[]
  revision: number
  /** 24-bit class code: base class, sub-class, programming interface. */
  classCode: number
  className: string
  /** Header type register (bit 7: multi-function). */
  headerType: number
  /** Its layout: 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge. */
  headerLayout: 'endpoint' | 'bridge' | 'cardbus' | 'unknown'
  multiFunction: boolean
  /** Subsystem vendor id (type 0 header only). */
  subsystemVendorId: number | null
  /** Subsystem id (type 0 header only). */
  subsystemId: number | null
  /** The BARs in use (the upper half of a 64-bit BAR is not listed). */
  bars: BarInfo[]
  /** The expansion ROM BAR (type 0 header only; `null` when unimplemented). */
  rom: RomInfo | null
  /** Interrupt pin: 0 none, 1-4 INTA-INTD. */
  interruptPin: number
  interruptLine: number
  /** The capability list from 0x34. */
  capabilities: CapabilityInfo[]
  /** The extended capability list from 0x100 (only for config space larger than 256 bytes). */
  extendedCapabilities: CapabilityInfo[]
  /** What did not make sense (bad pointers, loops, truncated capabilities...). */
  problems: string[]
}

/** Bounds-checked little-endian reads of a config space buffer. */
class ConfigReader {
  constructor(readonly buf: Buffer) {}
  has(offset: number, length: number): boolean {
    return offset >= 0 && offset + length <= this.buf.length
  }
  u8(offset: number): number {
    return this.has(offset, 1) ? this.buf.readUInt8(offset) : 0
  }
  u16(offset: number): number {
    return this.has(offset, 2) ? this.buf.readUInt16LE(offset) : 0
  }
  u32(offset: number): number {
    return this.has(offset, 4) ? this.buf.readUInt32LE(offset) : 0
  }
}

/** The standard header's length; capabilities live past it. */
const HEADER_SIZE = 0x40
/** Standard capabilities live in the first 256 bytes. */
const STANDARD_SIZE = 0x100
/** Bound of the standard walk: as many 4-byte capabilities as fit past the header. */
const MAX_CAPS = (STANDARD_SIZE - HEADER_SIZE) / 4
/** Bound of the extended walk. */
const MAX_EXT_CAPS = (CONFIG_MAX - STANDARD_SIZE) / 4

/**
 * Decodes config space `cfg` (256 bytes, or 4 KiB for PCI Express; shorter
 * buffers are decoded as far as they go). `regionSizes[i]` is the size of
 * vfio-user region `i` (BAR `i`, 6 the ROM): the BAR sizes come from there.
 * Never throws on bad bytes: what does not make sense is listed in
 * `problems`.
 */
export function decodeConfig(cfg: Buffer, regionSizes: ReadonlyArray<bigint | undefined> = []): ConfigInfo {
  const r = new ConfigReader(cfg)
  const problems: string[] = []
  if (cfg.length < HEADER_SIZE) problems.push(`config space is ${cfg.length} bytes, shorter than the 64-byte header`)
  const vendorId = r.u16(0x00)
  const deviceId = r.u16(0x02)
  const command = r.u16(0x04)
  const status = r.u16(0x06)
  const headerType = r.u8(0x0e)
  const layout = headerType & 0x7f
  const headerLayout = layout === 0 ? 'endpoint' : layout === 1 ? 'bridge' : layout === 2 ? 'cardbus' : 'unknown'
  const classCode = r.u32(0x08) >>> 8
  const sizeOf = (region: number): bigint | null => {
    const s = regionSizes[region]
    return s === undefined || s === 0n ? null : s
  }
  // Type 0 has six BARs, type 1 two, CardBus none at 0x10-0x24 in this sense.
  const barCount = layout === 0 ? 6 : layout === 1 ? 2 : 0
  const bars: BarInfo[] = []
  for (let i = 0; i < barCount; i++) {
    const raw = r.u32(0x10 + 4 * i)
    const size = sizeOf(i)
    if ((raw & 1) === 1) {
      bars.push({ index: i, kind: 'io', prefetchable: false, address: BigInt((raw & ~3) >>> 0), size, raw })
      continue
    }
    const type = (raw >>> 1) & 3
    const prefetchable = (raw & 8) !== 0
    const low = BigInt(raw >>> 0) & 0xffff_fff0n
    if (type === 2) {
      if (i + 1 >= barCount) {
        problems.push(`BAR${i} is 64-bit but has no upper half`)
        bars.push({ index: i, kind: 'mem64', prefetchable, address: low, size, raw })
        continue
      }
      const high = BigInt(r.u32(0x10 + 4 * (i + 1)))
      bars.push({ index: i, kind: 'mem64', prefetchable, address: (high << 32n) | low, size, raw })
      if (sizeOf(i + 1) !== null) problems.push(`region BAR${i + 1} is the upper half of 64-bit BAR${i} but has a size`)
      i += 1
      continue
    }
    // An unimplemented BAR reads zero and has no region.
    if (raw === 0 && size === null) continue
    const kind = type === 0 ? 'mem32' : type === 1 ? 'mem1m' : 'reserved'
    if (kind === 'reserved') problems.push(`BAR${i} has the reserved memory type 3`)
    bars.push({ index: i, kind, prefetchable, address: low, size, raw })
  }
  let rom: RomInfo | null = null
  if (layout === 0) {
    const raw = r.u32(0x30)
    const size = sizeOf(6)
    if (raw !== 0 || size !== null) rom = { address: (raw & 0xffff_f800) >>> 0, enabled: (raw & 1) !== 0, size }
  }
  const { capabilities, problems: capProblems } = walkCapabilities(cfg, regionSizes, (status & 0x10) !== 0)
  problems.push(...capProblems)
  let extendedCapabilities: CapabilityInfo[] = []
  if (cfg.length > STANDARD_SIZE) {
    const ext = walkExtendedCapabilities(cfg)
    extendedCapabilities = ext.capabilities
    problems.push(...ext.problems)
  }
  return {
    size: cfg.length,
    vendorId,
    deviceId,
    vendorName: vendorName(vendorId) ?? null,
    deviceName: deviceName(vendorId, deviceId) ?? null,
    command,
    commandBits: flagNames(command, COMMAND_BITS),
    status,
    statusBits: flagNames(status, STATUS_BITS),
    revision: r.u8(0x08),
    classCode,
    className: className(classCode),
    headerType,
    headerLayout,
    multiFunction: (headerType & 0x80) !== 0,
    subsystemVendorId: layout === 0 ? r.u16(0x2c) : null,
    subsystemId: layout === 0 ? r.u16(0x2e) : null,
    bars,
    rom,
    interruptPin: r.u8(0x3d),
    interruptLine: r.u8(0x3c),
    capabilities,
    extendedCapabilities,
    problems,
  }
}

/**
 * Walks the capability list from the pointer at 0x34 (when `listed`, i.e.
 * the status register's capability bit is set). Stops, with a problem, at a
 * pointer into the header, past the first 256 bytes or the buffer, or back to
 * a capability already seen; never follows more than 48 pointers.
 */
export function walkCapabilities(
  cfg: Buffer,
  regionSizes: ReadonlyArray<bigint | undefined> = [],
  listed = true,
): { capabilities: CapabilityInfo[]; problems: string[] } {
  const r = new ConfigReader(cfg)
  const capabilities: CapabilityInfo[] = []
  const problems: string[] = []
  if (!listed || !r.has(0x34, 1)) return { capabilities, problems }
  const limit = Math.min(cfg.length, STANDARD_SIZE)
  const seen = new Set<number>()
  let from = 0x34
  // The two low bits of every pointer are reserved: software masks them.
  let ptr = r.u8(0x34) & 0xfc
  while (ptr !== 0) {
    const where = `capability pointer ${hx(ptr, 2)} (at ${hx(from, 2)})`
    if (ptr < HEADER_SIZE) {
      problems.push(`${where} points into the header; list ignored from there`)
      break
    }
    if (ptr + 2 > limit) {
      problems.push(`${where} points past config space; list ignored from there`)
      break
    }
    if (seen.has(ptr)) {
      problems.push(`${where} loops back to a capability already listed; list ignored from there`)
      break
    }
    if (seen.size >= MAX_CAPS) {
      problems.push(`more than ${MAX_CAPS} capabilities; list ignored from ${hx(ptr, 2)}`)
      break
    }
    seen.add(ptr)
    const id = r.u8(ptr)
    const cap = decodeCapability(r, ptr, id, regionSizes, limit, problems)
    capabilities.push(cap)
    from = ptr + 1
    ptr = r.u8(ptr + 1) & 0xfc
  }
  return { capabilities, problems }
}

/** Decodes the capability `id` at `at`; fields past `limit` are reported and left out. */
function decodeCapability(
  r: ConfigReader,
  at: number,
  id: number,
  regionSizes: ReadonlyArray<bigint | undefined>,
  limit: number,
  problems: string[],
): CapabilityInfo {
  const name = CAP_NAMES[id] ?? 'Unknown'
  const cap: CapabilityInfo = { offset: at, id, name, fields: {}, summary: '' }
  const need = (length: number): boolean => {
    if (at + length <= limit) return true
    problems.push(`${name} capability at ${hx(at, 2)} runs past config space (needs ${length} bytes)`)
    return false
  }
  switch (id) {
    case 0x01: {
      if (!need(8)) break
      const pmc = r.u16(at + 2)
      const pmcsr = r.u16(at + 4)
      const f = {
        version: pmc & 7,
        pmeClock: (pmc & 0x8) !== 0,
        dsi: (pmc & 0x20) !== 0,
        d1: (pmc & 0x200) !== 0,
        d2: (pmc & 0x400) !== 0,
        pmeSupport: (pmc >>> 11) & 0x1f,
        powerState: POWER_STATES[pmcsr & 3] ?? 'D0',
        noSoftReset: (pmcsr & 0x8) !== 0,
        pmeEnable: (pmcsr & 0x100) !== 0,
        pmeStatus: (pmcsr & 0x8000) !== 0,
      }
      cap.fields = f
      const pme = ['D0', 'D1', 'D2', 'D3hot', 'D3cold'].map((s, i) => plusMinus(s, ((f.pmeSupport >>> i) & 1) === 1))
      cap.summary =
        `version ${f.version}, ${plusMinus('D1', f.d1)} ${plusMinus('D2', f.d2)} PME(${pme.join(',')}); ` +
        `status ${f.powerState} ${plusMinus('NoSoftRst', f.noSoftReset)} ${plusMinus('PME-Enable', f.pmeEnable)}`
      break
    }
    case 0x05: {
      if (!need(4)) break
      const ctrl = r.u16(at + 2)
      const address64 = (ctrl & 0x80) !== 0
      const perVectorMask = (ctrl & 0x100) !== 0
      const length = (address64 ? 0x0e : 0x0a) + (perVectorMask ? 0x0a : 0)
      const f: Record<string, number | boolean | string> = {
        enabled: (ctrl & 1) !== 0,
        vectorsCapable: 1 << Math.min((ctrl >>> 1) & 7, 5),
        vectorsEnabled: 1 << Math.min((ctrl >>> 4) & 7, 5),
        address64,
        perVectorMask,
      }
      let detail = ''
      if (need(length)) {
        const low = BigInt(r.u32(at + 4))
        const address = address64 ? (BigInt(r.u32(at + 8)) << 32n) | low : low
        const dataAt = at + (address64 ? 0x0c : 0x08)
        f.address = hx(address, address64 ? 16 : 8)
        f.data = r.u16(dataAt)
        detail = `; address ${f.address} data ${hx(r.u16(dataAt), 4)}`
        if (perVectorMask) {
          f.mask = r.u32(dataAt + 4)
          f.pending = r.u32(dataAt + 8)
          detail += ` mask ${hx(r.u32(dataAt + 4), 8)} pending ${hx(r.u32(dataAt + 8), 8)}`
        }
      }
      cap.fields = f
      cap.summary =
        `${plusMinus('Enable', f.enabled === true)} count ${String(f.vectorsEnabled)}/${String(f.vectorsCapable)} ` +
        `${plusMinus('Maskable', perVectorMask)} ${plusMinus('64bit', address64)}${detail}`
      break
    }
    case 0x10: {
      if (!need(0x14)) break
      const caps = r.u16(at + 2)
      const devCap = r.u32(at + 4)
      const devCtl = r.u16(at + 8)
      const linkCap = r.u32(at + 0x0c)
      const linkSta = r.u16(at + 0x12)
      const type = (caps >>> 4) & 0xf
      const f = {
        version: caps & 0xf,
        deviceType: EXPRESS_TYPES[type] ?? `Unknown type ${type}`,
        deviceTypeCode: type,
        slot: (caps & 0x100) !== 0,
        interruptMessage: (caps >>> 9) & 0x1f,
        maxPayloadSupported: 128 << Math.min(devCap & 7, 5),
        maxPayload: 128 << Math.min((devCtl >>> 5) & 7, 5),
        maxReadRequest: 128 << Math.min((devCtl >>> 12) & 7, 5),
        linkSpeedMax: LINK_SPEEDS[linkCap & 0xf] ?? 'unknown',
        linkWidthMax: (linkCap >>> 4) & 0x3f,
        linkSpeed: LINK_SPEEDS[linkSta & 0xf] ?? 'unknown',
        linkWidth: (linkSta >>> 4) & 0x3f,
      }
      cap.fields = f
      cap.summary =
        `v${f.version} ${f.deviceType}; MaxPayload ${f.maxPayload}/${f.maxPayloadSupported} bytes, ` +
        `MaxReadReq ${f.maxReadRequest} bytes; link ${f.linkSpeed} x${f.linkWidth} (max ${f.linkSpeedMax} x${f.linkWidthMax})`
      break
    }
    case 0x11: {
      if (!need(12)) break
      const ctrl = r.u16(at + 2)
      const table = r.u32(at + 4)
      const pba = r.u32(at + 8)
      const f = {
        enabled: (ctrl & 0x8000) !== 0,
        functionMask: (ctrl & 0x4000) !== 0,
        tableSize: (ctrl & 0x7ff) + 1,
        tableBir: table & 7,
        tableOffset: (table & ~7) >>> 0,
        pbaBir: pba & 7,
        pbaOffset: (pba & ~7) >>> 0,
      }
      cap.fields = f
      cap.summary =
        `${plusMinus('Enable', f.enabled)} ${plusMinus('Masked', f.functionMask)} count ${f.tableSize}; ` +
        `table BAR${f.tableBir} offset ${hx(f.tableOffset, 8)}, PBA BAR${f.pbaBir} offset ${hx(f.pbaOffset, 8)}`
      // Check the table (16 bytes per vector) and PBA (a bit per vector) fit their BARs.
      const fits = (bir: number, offset: number, length: number, what: string): void => {
        if (bir > 5) {
          problems.push(`MSI-X ${what} is in BAR${bir}, which does not exist`)
          return
        }
        const size = regionSizes[bir]
        if (size === undefined) return
        if (size === 0n) problems.push(`MSI-X ${what} is in BAR${bir}, which is absent`)
        else if (BigInt(offset) + BigInt(length) > size) problems.push(`MSI-X ${what} runs past the end of BAR${bir}`)
      }
      fits(f.tableBir, f.tableOffset, f.tableSize * 16, 'table')
      fits(f.pbaBir, f.pbaOffset, Math.ceil(f.tableSize / 64) * 8, 'PBA')
      break
    }
    case 0x09: {
      if (!need(3)) break
      cap.fields = { length: r.u8(at + 2) }
      cap.summary = `length ${r.u8(at + 2)}`
      break
    }
    default:
      break
  }
  return cap
}

/**
 * Walks the extended capability list from 0x100. Stops, with a problem, at a
 * pointer below 0x100, past the buffer, or back to a capability already seen;
 * never follows more than 960 pointers.
 */
export function walkExtendedCapabilities(cfg: Buffer): { capabilities: CapabilityInfo[]; problems: string[] } {
  const r = new ConfigReader(cfg)
  const capabilities: CapabilityInfo[] = []
  const problems: string[] = []
  if (!r.has(STANDARD_SIZE, 4)) return { capabilities, problems }
  const first = r.u32(STANDARD_SIZE)
  // No extended capabilities: zero, or all-ones from a device without them.
  if (first === 0 || first === 0xffff_ffff) return { capabilities, problems }
  const limit = Math.min(cfg.length, CONFIG_MAX)
  const seen = new Set<number>()
  let from = -1
  let ptr = STANDARD_SIZE
  while (ptr !== 0) {
    const where = from < 0 ? `extended capability at ${hx(ptr, 3)}` : `extended capability pointer ${hx(ptr, 3)} (at ${hx(from, 3)})`
    if (ptr < STANDARD_SIZE) {
      problems.push(`${where} points below 0x100; list ignored from there`)
      break
    }
    if (ptr + 4 > limit) {
      problems.push(`${where} points past config space; list ignored from there`)
      break
    }
    if (seen.has(ptr)) {
      problems.push(`${where} loops back to a capability already listed; list ignored from there`)
      break
    }
    if (seen.size >= MAX_EXT_CAPS) {
      problems.push(`more than ${MAX_EXT_CAPS} extended capabilities; list ignored from ${hx(ptr, 3)}`)
      break
    }
    seen.add(ptr)
    const header = r.u32(ptr)
    const id = header & 0xffff
    const version = (header >>> 16) & 0xf
    const cap: CapabilityInfo = { offset: ptr, id, name: EXT_CAP_NAMES[id] ?? 'Unknown', fields: { version }, summary: `v${version}` }
    if (id === 0x0003 && r.has(ptr + 4, 8)) {
      const serial = (BigInt(r.u32(ptr + 8)) << 32n) | BigInt(r.u32(ptr + 4))
      const bytes = hex(serial, 16).match(/../g) ?? []
      cap.fields.serial = bytes.reverse().join('-')
      cap.summary += `, serial ${String(cap.fields.serial)}`
    }
    capabilities.push(cap)
    from = ptr
    ptr = (header >>> 20) & 0xffc
  }
  return { capabilities, problems }
}

// ---------------------------------------------------------------- the report

/** One region of the report. */
export interface RegionReport {
  index: number
  name: string
  /** Size in bytes (0: absent). */
  size: bigint
  flags: number
  flagNames: string[]
  /** The mmappable areas the server listed. */
  sparseAreas: Array<{ offset: bigint; size: bigint }>
}

/** One IRQ index of the report. */
export interface IrqReport {
  index: number
  name: string
  /** Vectors (0: unsupported); absent when the server refused the request. */
  count?: number
  flags?: number
  flagNames?: string[]
  /** Why the server's answer is missing. */
  error?: string
}

/** Everything `inspect` learnt about a device. */
export interface InspectReport {
  path: string
  device: { flags: number; flagNames: string[]; numRegions: number; numIrqs: number }
  regions: RegionReport[]
  irqs: IrqReport[]
  /** Decoded config space, or `null` when it could not be read. */
  config: ConfigInfo | null
  /** Why config space is missing or partial. */
  configError?: string
  /** Problems with the device info (e.g. more IRQ indexes claimed than asked about). */
  problems: string[]
}

/** Builds the region part of a report from `regions()`. */
export function regionReports(regions: RegionDesc[]): RegionReport[] {
  return regions.map((r) => ({
    index: r.index,
    name: regionName(r.index),
    size: r.size,
    flags: r.flags,
    flagNames: regionFlagNames(r.flags),
    sparseAreas: r.sparseAreas.map((a) => ({ offset: a.offset, size: a.size })),
  }))
}

function describeError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  const message = err instanceof Error ? err.message : String(err)
  return typeof code === 'string' ? `${code} ${message}` : message
}

/** Options of {@link inspect}. */
export interface InspectOptions {
  /** Bound on each reply, in ms (default 5000). */
  timeoutMs?: number
}

/**
 * Connects to the vfio-user server at `path`, reads (only reads) what
 * `emudev inspect` shows, disconnects, and returns the report. Rejects only
 * when the connection fails (with the native error: `ERR_VFU_ENOENT`,
 * `ERR_VFU_ECONNREFUSED`, ...); refused IRQ or config space requests are
 * recorded in the report.
 */
export async function inspect(path: string, options: InspectOptions = {}): Promise<InspectReport> {
  const client = await native.NativeAsyncClient.connect(path, { timeoutMs: options.timeoutMs ?? 5000 })
  try {
    const info = client.deviceInfo()
    const regions = regionReports(client.regions())
    const problems: string[] = []
    const irqCount = Math.min(info.numIrqs, IRQ_MAX)
    if (info.numIrqs > IRQ_MAX) problems.push(`the server claims ${info.numIrqs} IRQ indexes; only the first ${IRQ_MAX} are listed`)
    const irqs: IrqReport[] = []
    for (let i = 0; i < irqCount; i++) {
      try {
        const irq = await client.irqInfo(i)
        irqs.push({ index: i, name: irqName(i), count: irq.count, flags: irq.flags, flagNames: irqFlagNames(irq.flags) })
      } catch (err) {
        irqs.push({ index: i, name: irqName(i), error: describeError(err) })
      }
    }
    const report: InspectReport = {
      path,
      device: { flags: info.flags, flagNames: deviceFlagNames(info.flags), numRegions: info.numRegions, numIrqs: info.numIrqs },
      regions,
      irqs,
      config: null,
      problems,
    }
    const cfgRegion = regions.find((r) => r.index === CONFIG_REGION)
    if (cfgRegion === undefined || cfgRegion.size === 0n) {
      report.configError = 'the server has no config space region'
    } else if ((cfgRegion.flags & 1) === 0) {
      report.configError = 'the config space region is not readable'
    } else {
      const length = Number(cfgRegion.size < BigInt(CONFIG_MAX) ? cfgRegion.size : BigInt(CONFIG_MAX))
      const chunks: Buffer[] = []
      let read = 0
      while (read < length) {
        const n = Math.min(CONFIG_CHUNK, length - read)
        try {
          const chunk = await client.regionRead(CONFIG_REGION, read, n)
          chunks.push(chunk.subarray(0, n))
          if (chunk.length < n) break
          read += n
        } catch (err) {
          report.configError = `reading config space at ${hx(read, 3)}: ${describeError(err)}`
          break
        }
      }
      const cfg = Buffer.concat(chunks)
      if (cfg.length > 0) report.config = decodeConfig(cfg, regions.map((r) => r.size))
    }
    return report
  } finally {
    await client.close()
  }
}

// ---------------------------------------------------------------- output

/** Left-aligned columns separated by two spaces, without trailing blanks. */
export function table(rows: string[][], indent = '  '): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows
    .map((row) => `${indent}${row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ')}`.trimEnd())
    .join('\n')
}

function flagList(value: number, names: string[], digits = 1): string {
  return `${hx(value, digits)}${names.length > 0 ? ` <${names.join(' ')}>` : ''}`
}

function barLine(bar: BarInfo): string {
  const size = bar.size === null ? 'size unknown' : `size ${formatSize(bar.size)}`
  if (bar.kind === 'io') return `I/O ports at ${hx(bar.address, 4)} [${size}]`
  const type = bar.kind === 'mem64' ? '64-bit' : bar.kind === 'mem32' ? '32-bit' : bar.kind === 'mem1m' ? 'below 1M' : 'reserved type'
  const digits = bar.kind === 'mem64' ? 16 : 8
  return `memory at ${hx(bar.address, digits)} (${type}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'}) [${size}]`
}

function idName(...parts: Array<string | null>): string {
  const known = parts.filter((p): p is string => p !== null)
  return known.length > 0 ? `  ${known.join(' ')}` : ''
}

/** The report as aligned, human-readable text (ends with a newline). */
export function formatReport(report: InspectReport): string {
  const out: string[] = []
  const c = report.config
  const title = c === null ? 'vfio-user device' : `${hex(c.vendorId, 4)}:${hex(c.deviceId, 4)}${idName(c.vendorName, c.deviceName)}`
  out.push(`${report.path}: ${title}`)
  const d = report.device
  out.push(`  Device info:  flags ${flagList(d.flags, d.flagNames)}, ${d.numRegions} regions, ${d.numIrqs} IRQ indexes`)
  for (const p of report.problems) out.push(`  Warning: ${p}`)

  const present = report.regions.filter((r) => r.size !== 0n)
  const absent = report.regions.filter((r) => r.size === 0n)
  out.push('', `Regions (${present.length} of ${report.regions.length}${absent.length > 0 ? `; absent: ${absent.map((r) => r.name).join(' ')}` : ''}):`)
  if (present.length > 0) {
    const rows = [['index', 'name', 'size', 'flags', 'mmap areas']]
    for (const r of present) {
      const areas = r.sparseAreas.map((a) => `${hx(a.offset)}+${formatSize(a.size)}`).join(', ')
      rows.push([String(r.index), r.name, formatSize(r.size), r.flagNames.join(' ') || '-', areas])
    }
    out.push(table(rows))
  }

  out.push('', 'IRQs:')
  const irqRows = [['index', 'name', 'count', 'flags']]
  for (const i of report.irqs) {
    if (i.error !== undefined) irqRows.push([String(i.index), i.name, '?', `error: ${i.error}`])
    else irqRows.push([String(i.index), i.name, String(i.count ?? 0), (i.flagNames ?? []).join(' ') || '-'])
  }
  out.push(table(irqRows))

  out.push('')
  if (c === null) {
    out.push(`Config space: unavailable (${report.configError ?? 'not read'})`)
    return `${out.join('\n')}\n`
  }
  out.push(`Config space (${c.size} bytes):`)
  if (report.configError !== undefined) out.push(`  Warning: ${report.configError}`)
  const fields: string[][] = []
  fields.push(['Vendor:', `${hex(c.vendorId, 4)}${idName(c.vendorName)}`])
  fields.push(['Device:', `${hex(c.deviceId, 4)}${idName(c.deviceName)}`])
  if (c.subsystemVendorId !== null && c.subsystemId !== null) {
    fields.push(['Subsystem:', `${hex(c.subsystemVendorId, 4)}:${hex(c.subsystemId, 4)}`])
  }
  fields.push(['Class:', `${hex(c.classCode, 6)}  ${c.className}`])
  fields.push(['Revision:', hx(c.revision, 2)])
  fields.push(['Header type:', `${hx(c.headerType, 2)} (${c.headerLayout}${c.multiFunction ? ', multi-function' : ''})`])
  fields.push(['Command:', `${flagList(c.command, c.commandBits, 4)}`])
  fields.push(['Status:', `${flagList(c.status, c.statusBits, 4)}`])
  const pin = c.interruptPin === 0 ? 'none' : c.interruptPin <= 4 ? `INT${'ABCD'[c.interruptPin - 1] ?? '?'}` : `invalid (${c.interruptPin})`
  fields.push(['Interrupt:', `pin ${pin}, line ${c.interruptLine}`])
  for (const bar of c.bars) fields.push([`BAR${bar.index}:`, barLine(bar)])
  if (c.rom !== null) {
    const size = c.rom.size === null ? 'size unknown' : `size ${formatSize(c.rom.size)}`
    fields.push(['ROM:', `at ${hx(c.rom.address, 8)} (${c.rom.enabled ? 'enabled' : 'disabled'}) [${size}]`])
  }
  out.push(table(fields))
  const caps = (list: CapabilityInfo[], digits: number): string[][] =>
    list.map((cap) => [`[${hex(cap.offset, digits)}]`, `${cap.name}${cap.name === 'Unknown' ? ` (id ${hx(cap.id, 2)})` : ''}:`, cap.summary])
  out.push(c.capabilities.length > 0 ? '  Capabilities:' : '  Capabilities: none')
  if (c.capabilities.length > 0) out.push(table(caps(c.capabilities, 2), '    '))
  if (c.size > STANDARD_SIZE) {
    out.push(c.extendedCapabilities.length > 0 ? '  Extended capabilities:' : '  Extended capabilities: none')
    if (c.extendedCapabilities.length > 0) out.push(table(caps(c.extendedCapabilities, 3), '    '))
  }
  for (const p of c.problems) out.push(`  Warning: ${p}`)
  return `${out.join('\n')}\n`
}

/** The report as one JSON object (bigints as numbers when exact, else decimal strings). */
export function reportToJson(report: InspectReport): string {
  return JSON.stringify(report, (_key, value: unknown) => {
    if (typeof value !== 'bigint') return value
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString()
  })
}
