// `emudev inspect`: the decoder on hand-built (and hostile) config bytes, and
// the CLI spawned against native and TypeScript devices.
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'

import test from 'ava'

import { NativeServer, PciDevice } from '../src/index'
import {
  className,
  decodeConfig,
  formatReport,
  formatSize,
  irqFlagNames,
  regionFlagNames,
  reportToJson,
  walkCapabilities,
  walkExtendedCapabilities,
  type InspectReport,
} from '../src/inspect'
import { cli, collectStderr, ensureDistBuilt, tempSocket, waitForExit } from './helpers'

test.before(ensureDistBuilt)

/** Runs the built CLI without blocking this process's event loop (a TS device may be served here). */
async function run(...args: string[]): Promise<{ code: number | string | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  const stderr = collectStderr(child)
  const code = await waitForExit(child, 30_000)
  if (code === null) child.kill('SIGKILL')
  return { code, stdout, stderr: stderr() }
}

// ------------------------------------------------------------ hand-built config space

/** A type 0 header with the capability list bit set and `cap` as the first pointer. */
function header(size = 256, cap = 0x40): Buffer {
  const b = Buffer.alloc(size)
  b.writeUInt16LE(0x1234, 0x00)
  b.writeUInt16LE(0xabcd, 0x02)
  b.writeUInt16LE(0x0006, 0x04) // Mem + BusMaster
  b.writeUInt16LE(0x0010, 0x06) // capability list
  b.writeUInt8(0x02, 0x08) // revision
  b.writeUIntLE(0x020000, 0x09, 3) // Ethernet controller
  b.writeUInt8(cap, 0x34)
  b.writeUInt8(2, 0x3d) // INTB
  return b
}

test('decodeConfig decodes the header, command/status bits and the BAR kinds', (t) => {
  const b = header(256, 0)
  b.writeUInt32LE(0xfebf_000c, 0x10) // 64-bit prefetchable, low half
  b.writeUInt32LE(0x0000_0001, 0x14) // high half
  b.writeUInt32LE(0x0000_c001, 0x18) // I/O at 0xc000
  b.writeUInt32LE(0xfe00_0000, 0x1c) // 32-bit non-prefetchable
  b.writeUInt16LE(0x8086, 0x2c)
  b.writeUInt16LE(0x0001, 0x2e)
  b.writeUInt32LE(0xfff0_0001, 0x30) // ROM enabled
  const c = decodeConfig(b, [0x4000n, 0n, 0x20n, 0x1000n, 0n, 0n, 0x10000n])
  t.is(c.vendorId, 0x1234)
  t.is(c.deviceId, 0xabcd)
  t.deepEqual(c.commandBits, ['Mem', 'BusMaster'])
  t.deepEqual(c.statusBits, ['Cap'])
  t.is(c.classCode, 0x020000)
  t.is(c.className, 'Ethernet controller')
  t.is(c.revision, 2)
  t.is(c.headerLayout, 'endpoint')
  t.is(c.subsystemVendorId, 0x8086)
  t.is(c.interruptPin, 2)
  t.deepEqual(
    c.bars.map((b) => [b.index, b.kind, b.prefetchable, b.address, b.size]),
    [
      [0, 'mem64', true, 0x1_febf_0000n, 0x4000n],
      [2, 'io', false, 0xc000n, 0x20n],
      [3, 'mem32', false, 0xfe00_0000n, 0x1000n],
    ],
  )
  t.deepEqual(c.rom, { address: 0xfff0_0000, enabled: true, size: 0x10000n })
  t.deepEqual(c.capabilities, [])
  t.deepEqual(c.problems, [])
})

test('the known ids have names, unknown ones do not', (t) => {
  const ids = (vendor: number, device: number) => {
    const b = header(256, 0)
    b.writeUInt16LE(vendor, 0)
    b.writeUInt16LE(device, 2)
    const c = decodeConfig(b)
    return [c.vendorName, c.deviceName]
  }
  t.deepEqual(ids(0x1234, 0x11e8), ['QEMU', 'edu'])
  t.deepEqual(ids(0x8086, 0x1889), ['Intel', 'Ethernet Adaptive Virtual Function (AVF)'])
  t.deepEqual(ids(0x494f, 0x0dc8), ['ACCES I/O', 'PCI-IDIO-16'])
  t.deepEqual(ids(0x1d0f, 0x0001), [null, null])
  t.is(className(0x00ff00), 'Unclassified device')
  t.is(className(0xee0000), 'Unknown class ee')
})

test('PM, MSI (32-bit, per-vector mask), MSI-X and Express capabilities are decoded', (t) => {
  const b = header(256, 0x40)
  // PM at 0x40 -> MSI at 0x48.
  b.writeUInt8(0x01, 0x40)
  b.writeUInt8(0x48, 0x41)
  b.writeUInt16LE(0x0603 | (0x19 << 11), 0x42) // v3, D1+ D2+, PME from D0 and D3hot/D3cold
  b.writeUInt16LE(0x0103, 0x44) // D3hot, PME-Enable+
  // MSI at 0x48 -> MSI-X at 0x60: 32-bit, per-vector mask, 4 vectors capable, 2 enabled, enabled.
  b.writeUInt8(0x05, 0x48)
  b.writeUInt8(0x60, 0x49)
  b.writeUInt16LE(0x0100 | (1 << 4) | (2 << 1) | 1, 0x4a)
  b.writeUInt32LE(0xfee0_0000, 0x4c)
  b.writeUInt16LE(0x4021, 0x50)
  b.writeUInt32LE(0x2, 0x54) // mask
  b.writeUInt32LE(0x1, 0x58) // pending
  // MSI-X at 0x60 -> Express at 0x70: 8 vectors, table in BAR2 at 0x1000, PBA in BAR2 at 0x2000.
  b.writeUInt8(0x11, 0x60)
  b.writeUInt8(0x70, 0x61)
  b.writeUInt16LE(0x8000 | 7, 0x62)
  b.writeUInt32LE(0x1000 | 2, 0x64)
  b.writeUInt32LE(0x2000 | 2, 0x68)
  // Express at 0x70, end of list: v2 Root Complex Integrated Endpoint.
  b.writeUInt8(0x10, 0x70)
  b.writeUInt16LE(0x0092, 0x72)
  b.writeUInt32LE(0x1, 0x74) // MaxPayload supported 256
  b.writeUInt16LE(0x2020, 0x78) // MaxPayload 256, MaxReadReq 512
  b.writeUInt32LE(0x0000_0083, 0x7c) // 8GT/s x8
  b.writeUInt16LE(0x0043, 0x82) // 8GT/s x4
  const c = decodeConfig(b, [0n, 0n, 0x4000n])
  t.deepEqual(
    c.capabilities.map((cap) => [cap.offset, cap.name]),
    [
      [0x40, 'Power Management'],
      [0x48, 'MSI'],
      [0x60, 'MSI-X'],
      [0x70, 'Express'],
    ],
  )
  const [pm, msi, msix, exp] = c.capabilities
  t.like(pm?.fields, { version: 3, d1: true, d2: true, powerState: 'D3hot', pmeEnable: true, pmeStatus: false, pmeSupport: 0x19 })
  t.regex(pm?.summary ?? '', /PME\(D0\+,D1-,D2-,D3hot\+,D3cold\+\)/)
  t.like(msi?.fields, {
    enabled: true,
    vectorsCapable: 4,
    vectorsEnabled: 2,
    address64: false,
    perVectorMask: true,
    address: '0xfee00000',
    data: 0x4021,
    mask: 2,
    pending: 1,
  })
  t.like(msix?.fields, { enabled: true, functionMask: false, tableSize: 8, tableBir: 2, tableOffset: 0x1000, pbaBir: 2, pbaOffset: 0x2000 })
  t.like(exp?.fields, {
    version: 2,
    deviceType: 'Root Complex Integrated Endpoint',
    maxPayloadSupported: 256,
    maxPayload: 256,
    maxReadRequest: 512,
    linkSpeedMax: '8GT/s',
    linkWidthMax: 8,
    linkSpeed: '8GT/s',
    linkWidth: 4,
  })
  t.deepEqual(c.problems, [])
})

test('an MSI-X table outside its BAR is reported', (t) => {
  const b = header(256, 0x40)
  b.writeUInt8(0x11, 0x40)
  b.writeUInt16LE(15, 0x42) // 16 vectors: a 256-byte table
  b.writeUInt32LE(0x0f80 | 0, 0x44) // BAR0 at 0xf80: runs past a 4 KiB BAR
  b.writeUInt32LE(0x0000 | 1, 0x48) // PBA in BAR1, absent
  const c = decodeConfig(b, [0x1000n, 0n])
  t.deepEqual(c.problems, ['MSI-X table runs past the end of BAR0', 'MSI-X PBA is in BAR1, which is absent'])
})

test('a capability pointing back to itself is reported, not followed forever', (t) => {
  const b = header(256, 0x40)
  b.writeUInt8(0x05, 0x40)
  b.writeUInt8(0x40, 0x41) // next: itself
  const { capabilities, problems } = walkCapabilities(b)
  t.is(capabilities.length, 1)
  t.is(capabilities[0]?.name, 'MSI')
  t.deepEqual(problems, ['capability pointer 0x40 (at 0x41) loops back to a capability already listed; list ignored from there'])
})

test('a longer capability cycle is cut at the first repeat', (t) => {
  const b = header(256, 0x40)
  b.writeUInt8(0x01, 0x40)
  b.writeUInt8(0x50, 0x41)
  b.writeUInt8(0x09, 0x50)
  b.writeUInt8(0x40, 0x51) // back to the first
  const c = decodeConfig(b)
  t.deepEqual(
    c.capabilities.map((cap) => cap.offset),
    [0x40, 0x50],
  )
  t.is(c.problems.length, 1)
  t.regex(c.problems[0] ?? '', /loops back/)
})

test('capability pointers into the header or past config space are rejected', (t) => {
  const intoHeader = header(256, 0x10)
  const a = decodeConfig(intoHeader)
  t.deepEqual(a.capabilities, [])
  t.deepEqual(a.problems, ['capability pointer 0x10 (at 0x34) points into the header; list ignored from there'])

  const laterIntoHeader = header(256, 0x40)
  laterIntoHeader.writeUInt8(0x01, 0x40)
  laterIntoHeader.writeUInt8(0x3c, 0x41)
  const b = decodeConfig(laterIntoHeader)
  t.is(b.capabilities.length, 1)
  t.deepEqual(b.problems, ['capability pointer 0x3c (at 0x41) points into the header; list ignored from there'])

  // A buffer cut short: the pointer is fine for 256 bytes but not for 0x60.
  const short = header(0x60, 0x80)
  t.deepEqual(decodeConfig(short).problems, ['capability pointer 0x80 (at 0x34) points past config space; list ignored from there'])

  // A capability whose body does not fit.
  const body = header(0x44, 0x40)
  body.writeUInt8(0x10, 0x40)
  const d = decodeConfig(body)
  t.deepEqual(
    d.capabilities.map((cap) => [cap.name, cap.summary]),
    [['Express', '']],
  )
  t.deepEqual(d.problems, ['Express capability at 0x40 runs past config space (needs 20 bytes)'])
})

test('the capability list is not walked when the status bit says there is none', (t) => {
  const b = header(256, 0x40)
  b.writeUInt16LE(0, 0x06)
  b.writeUInt8(0x05, 0x40)
  t.deepEqual(decodeConfig(b).capabilities, [])
})

test('a config space shorter than the header is decoded without throwing', (t) => {
  const c = decodeConfig(Buffer.from([0x86, 0x80, 0x89, 0x18]))
  t.is(c.vendorId, 0x8086)
  t.is(c.deviceId, 0x1889)
  t.deepEqual(c.problems, ['config space is 4 bytes, shorter than the 64-byte header'])
  t.deepEqual(decodeConfig(Buffer.alloc(0)).vendorId, 0)
})

test('a 64-bit BAR in the last slot is reported', (t) => {
  const b = header(256, 0)
  b.writeUInt32LE(0x4, 0x24)
  const c = decodeConfig(b, [0n, 0n, 0n, 0n, 0n, 0x1000n])
  t.deepEqual(c.problems, ['BAR5 is 64-bit but has no upper half'])
  t.is(c.bars[0]?.kind, 'mem64')
})

test('extended capabilities are walked from 0x100 with loop and range checks', (t) => {
  const ext = (id: number, version: number, next: number) => (((next << 20) | (version << 16) | id) >>> 0)
  const b = header(4096, 0)
  b.writeUInt32LE(ext(0x0001, 2, 0x140), 0x100) // AER -> 0x140
  b.writeUInt32LE(ext(0x0003, 1, 0x000), 0x140) // DSN, last
  b.writeUInt32LE(0x5566_7788, 0x144)
  b.writeUInt32LE(0x1122_3344, 0x148)
  const c = decodeConfig(b)
  t.deepEqual(
    c.extendedCapabilities.map((cap) => [cap.offset, cap.name, cap.fields.version]),
    [
      [0x100, 'Advanced Error Reporting', 2],
      [0x140, 'Device Serial Number', 1],
    ],
  )
  t.is(c.extendedCapabilities[1]?.fields.serial, '88-77-66-55-44-33-22-11')
  t.deepEqual(c.problems, [])

  const loop = header(4096, 0)
  loop.writeUInt32LE(ext(0x000b, 1, 0x100), 0x100) // points to itself
  const l = walkExtendedCapabilities(loop)
  t.is(l.capabilities.length, 1)
  t.deepEqual(l.problems, ['extended capability pointer 0x100 (at 0x100) loops back to a capability already listed; list ignored from there'])

  const below = header(4096, 0)
  below.writeUInt32LE(ext(0x000b, 1, 0x040), 0x100)
  t.deepEqual(walkExtendedCapabilities(below).problems, [
    'extended capability pointer 0x040 (at 0x100) points below 0x100; list ignored from there',
  ])

  const past = header(0x200, 0)
  past.writeUInt32LE(ext(0x000b, 1, 0x400), 0x100)
  t.deepEqual(walkExtendedCapabilities(past).problems, [
    'extended capability pointer 0x400 (at 0x100) points past config space; list ignored from there',
  ])

  // 256-byte config space: no extended list, whatever follows.
  t.deepEqual(decodeConfig(header(256, 0)).extendedCapabilities, [])
  // All-ones at 0x100 means none.
  const ones = header(4096, 0)
  ones.writeUInt32LE(0xffff_ffff, 0x100)
  t.deepEqual(walkExtendedCapabilities(ones), { capabilities: [], problems: [] })
})

test('flag names and sizes', (t) => {
  t.deepEqual(regionFlagNames(0x7), ['R', 'W', 'MMAP'])
  t.deepEqual(irqFlagNames(0xb), ['EVENTFD', 'MASKABLE', 'NORESIZE'])
  t.is(formatSize(1n << 20n), '1 MiB')
  t.is(formatSize(4096), '4 KiB')
  t.is(formatSize(300), '300 B')
  t.is(formatSize(0n), '0')
})

test('text and JSON output of a hand-built report, with a size past 2^53', (t) => {
  const report: InspectReport = {
    path: '/tmp/x.sock',
    device: { flags: 2, flagNames: ['PCI'], numRegions: 9, numIrqs: 1 },
    regions: [
      { index: 0, name: 'BAR0', size: 1n << 60n, flags: 7, flagNames: ['R', 'W', 'MMAP'], sparseAreas: [{ offset: 0x1000n, size: 0x1000n }] },
      { index: 7, name: 'CONFIG', size: 0n, flags: 0, flagNames: [], sparseAreas: [] },
    ],
    irqs: [{ index: 0, name: 'INTX', error: 'ERR_VFU_EINVAL refused' }],
    config: null,
    configError: 'the server has no config space region',
    problems: [],
  }
  const text = formatReport(report)
  t.regex(text, /^\/tmp\/x\.sock: vfio-user device$/m)
  t.regex(text, /^ {2}0 {6}BAR0 {2}1 EiB {2}R W MMAP {2}0x1000\+4 KiB$/m)
  t.regex(text, /^ {2}0 {6}INTX {2}\? {6}error: ERR_VFU_EINVAL refused$/m)
  t.regex(text, /^Config space: unavailable \(the server has no config space region\)$/m)
  const json = JSON.parse(reportToJson(report)) as { regions: Array<{ size: unknown; sparseAreas: Array<{ size: unknown }> }> }
  t.is(json.regions[0]?.size, (1n << 60n).toString())
  t.is(json.regions[0]?.sparseAreas[0]?.size, 4096)
})

// ------------------------------------------------------------ the CLI against real servers

test('inspect of the native edu shows its ids, BAR0 of 1 MiB and the MSI capability, and writes nothing', async (t) => {
  const sock = tempSocket(t)
  const server = NativeServer.listenEdu(sock)
  t.teardown(() => server.close())
  const r = await run('inspect', sock)
  t.is(r.stderr, '')
  t.is(r.code, 0)
  t.regex(r.stdout, new RegExp(`^${sock}: 1234:11e8 {2}QEMU edu$`, 'm'))
  t.regex(r.stdout, /^ {2}Device info: {2}flags 0x3 <RESET PCI>, 9 regions, 5 IRQ indexes$/m)
  t.regex(r.stdout, /^ {2}0 +BAR0 +1 MiB +R W$/m)
  t.regex(r.stdout, /^ {2}BAR0: +memory at 0x[0-9a-f]{8} \(32-bit, non-prefetchable\) \[size 1 MiB\]$/m)
  t.regex(r.stdout, /^ {4}\[40\] +MSI: +Enable- count 1\/1 /m)
  t.regex(r.stdout, /^ {2}1 +MSI +1 +EVENTFD/m)
  t.notRegex(r.stdout, /Warning/)
  const stats = server.eduStats()
  t.is(stats.mmioWrites, 0, 'inspect never writes to BAR0')
  t.is(stats.mmioReads, 0, 'nor reads it')
})

test('inspect of the native iavf shows 8086:1889, MSI-X with 2 vectors and the Express capability', async (t) => {
  const sock = tempSocket(t, 'iavf.sock')
  const server = NativeServer.listenIavf(sock, { queues: 1 })
  t.teardown(() => server.close())
  const r = await run('inspect', sock)
  t.is(r.stderr, '')
  t.is(r.code, 0)
  t.regex(r.stdout, /^\S+: 8086:1889 {2}Intel Ethernet Adaptive Virtual Function \(AVF\)$/m)
  t.regex(r.stdout, /^ {2}Class: +020000 {2}Ethernet controller$/m)
  t.regex(r.stdout, /^ {4}\[[0-9a-f]{2}\] +MSI-X: +Enable- Masked- count 2; table BAR3 offset 0x00000000, PBA BAR3 offset 0x00002000$/m)
  t.regex(r.stdout, /^ {4}\[[0-9a-f]{2}\] +Express: +v2 Endpoint;/m)
  t.regex(r.stdout, /^ {2}BAR0: +memory at 0x[0-9a-f]{16} \(64-bit, prefetchable\) \[size 64 KiB\]$/m)
  t.regex(r.stdout, /^ {2}2 +MSIX +2 +EVENTFD MASKABLE NORESIZE$/m)
  t.regex(r.stdout, /^Config space \(4096 bytes\):$/m)
  t.regex(r.stdout, /^ {2}Extended capabilities: none$/m)
  t.notRegex(r.stdout, /Warning/)
  t.is(server.iavfStats().mmioWrites, 0)
})

test('inspect --json prints one object with the device, regions, IRQs and decoded config space', async (t) => {
  const sock = tempSocket(t, 'iavf.sock')
  const server = NativeServer.listenIavf(sock, { queues: 4 })
  t.teardown(() => server.close())
  const r = await run('inspect', '--json', sock)
  t.is(r.code, 0)
  t.is(r.stdout.trimEnd().split('\n').length, 1)
  const j = JSON.parse(r.stdout) as {
    path: string
    device: { flagNames: string[]; numIrqs: number }
    regions: Array<{ name: string; size: number }>
    irqs: Array<{ name: string; count: number }>
    config: {
      vendorId: number
      deviceId: number
      deviceName: string
      bars: Array<{ index: number; kind: string; size: number }>
      capabilities: Array<{ name: string; fields: Record<string, unknown> }>
    }
  }
  t.is(j.path, sock)
  t.deepEqual(j.device.flagNames, ['RESET', 'PCI'])
  t.is(j.regions.find((x) => x.name === 'CONFIG')?.size, 4096)
  t.is(j.irqs.find((x) => x.name === 'MSIX')?.count, 5, '4 queue pairs + the admin queue vector')
  t.is(j.config.vendorId, 0x8086)
  t.is(j.config.deviceId, 0x1889)
  t.is(j.config.deviceName, 'Ethernet Adaptive Virtual Function (AVF)')
  t.deepEqual(j.config.bars.map((b) => [b.index, b.kind, b.size]), [
    [0, 'mem64', 65536],
    [3, 'mem64', 16384],
  ])
  t.deepEqual(j.config.capabilities.find((c) => c.name === 'MSI-X')?.fields.tableSize, 5)
  t.truthy(j.config.capabilities.find((c) => c.name === 'Express'))
})

test('inspect of a TypeScript PciDevice shows its 64-bit BAR, the PM capability, and leaves the BARs alone', async (t) => {
  const sock = tempSocket(t, 'ts.sock')
  let handlerCalls = 0
  const device = new PciDevice({
    name: 'inspect-me',
    ids: { vendorId: 0x494f, deviceId: 0x0dc8, subsystemVendorId: 0x494f, subsystemId: 0x0dc8, classCode: 0x118000, revision: 3 },
    bars: [
      { index: 0, size: 0x10000, kind: 'mem64', prefetchable: true },
      { index: 2, size: 0x40, kind: 'io' },
    ],
    irqs: { intx: 'a', msi: { vectors: 4, perVectorMask: true } },
    pm: true,
    handlers: {
      read: () => {
        handlerCalls += 1
        return 0
      },
      write: () => {
        handlerCalls += 1
      },
    },
  })
  t.teardown(() => device.close())
  await device.listen(sock)
  const barsBefore = device.config.read(0x10, 24)
  const r = await run('inspect', sock)
  t.is(r.stderr, '')
  t.is(r.code, 0)
  t.regex(r.stdout, /: 494f:0dc8 {2}ACCES I\/O PCI-IDIO-16$/m)
  t.regex(r.stdout, /^ {2}Class: +118000 {2}Signal processing controller$/m)
  t.regex(r.stdout, /^ {2}Revision: +0x03$/m)
  t.regex(r.stdout, /^ {2}BAR0: +memory at 0x[0-9a-f]{16} \(64-bit, prefetchable\) \[size 64 KiB\]$/m)
  t.regex(r.stdout, /^ {2}BAR2: +I\/O ports at 0x[0-9a-f]{4} \[size 64 B\]$/m)
  t.notRegex(r.stdout, /^ {2}BAR1:/m, 'the upper half of the 64-bit BAR is not a BAR of its own')
  t.regex(r.stdout, /^ {4}\[[0-9a-f]{2}\] +Power Management: +version \d/m)
  t.regex(r.stdout, /^ {4}\[[0-9a-f]{2}\] +MSI: +Enable- count 1\/4 Maskable\+ 64bit\+/m)
  t.regex(r.stdout, /^ {2}Interrupt: +pin INTA, line \d+$/m)
  t.notRegex(r.stdout, /Warning/)
  t.deepEqual(device.config.read(0x10, 24), barsBefore, 'no BAR was sized by writing all-ones')
  t.is(handlerCalls, 0)
})

test('inspect usage errors exit 2 with one line; a missing server exits 1 with one line', async (t) => {
  const missing = await run('inspect')
  t.is(missing.code, 2)
  t.is(missing.stderr, 'emudev inspect: missing socket path (e.g. emudev inspect /tmp/edu.sock)\n')
  const flag = await run('inspect', '/tmp/x.sock', '--verbose')
  t.is(flag.code, 2)
  t.is(flag.stderr, "emudev inspect: unknown option '--verbose'\n")
  const extra = await run('inspect', '/tmp/x.sock', '/tmp/y.sock')
  t.is(extra.code, 2)
  t.is(extra.stderr, "emudev inspect: unexpected argument '/tmp/y.sock'\n")
  const json = await run('inspect', '--json=yes', '/tmp/x.sock')
  t.is(json.code, 2)
  t.is(json.stderr, "emudev inspect: option '--json' takes no value\n")

  const sock = tempSocket(t, 'nobody.sock')
  const gone = await run('inspect', sock)
  t.is(gone.code, 1)
  t.is(gone.stdout, '')
  t.regex(gone.stderr, new RegExp(`^emudev inspect: ${sock}: ERR_VFU_ENOENT [^\\n]+\\n$`))

  const help = await run('inspect', '--help')
  t.is(help.code, 0)
  t.regex(help.stdout, /^Usage: emudev inspect <socket> \[--json\]/)
  t.regex((await run('--help')).stdout, /^\s+inspect\s/m)
})

test('inspect of a path that is not a listening socket exits 1 with one line', async (t) => {
  const path = tempSocket(t, 'plain-file')
  writeFileSync(path, '')
  const r = await run('inspect', path)
  t.is(r.code, 1)
  t.is(r.stdout, '')
  t.regex(r.stderr, new RegExp(`^emudev inspect: ${path}: ERR_VFU_[A-Z]+ [^\\n]+\\n$`))
})
