// The ARP + ICMP echo responder (src/responder.ts) on crafted frames, its receive loop on a fake
// port, and (last test) on real emulated VFs joined by the pair back-end. All but the last are
// pure: no addon, no sockets. The frames are built here byte by byte, and checksums are
// verified with this file's own implementation.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test, { type ExecutionContext } from 'ava'

import type { DatapathQueueStats } from '../index.js'
import { IavfPort, NativeServer } from '../src/index'

import {
  IGNORE_REASONS,
  Responder,
  internetChecksum,
  parseIpv4,
  parseMac,
  type ResponderPort,
  type Verdict,
} from '../src/responder'

const GUEST_MAC = '02:00:00:00:00:01'
const GUEST_IP = '198.18.0.1'
const OUR_MAC = '02:00:00:00:00:02'
const OUR_IP = '198.18.0.2'

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
const mac = (m: string) => Buffer.from(m.replaceAll(':', ''), 'hex')
const ip4 = (a: string) => Buffer.from(a.split('.').map(Number))

/** RFC 1071, written independently of the module under test. */
function checksum(b: Buffer): number {
  let sum = 0
  for (let i = 0; i < b.length; i += 2) sum += b.readUInt8(i) * 256 + (i + 1 < b.length ? b.readUInt8(i + 1) : 0)
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16)
  return 0xffff - sum
}

function arpRequest(o: { dst?: string; src?: string; sha?: string; spa?: string; tpa?: string; op?: number } = {}): Buffer {
  return Buffer.concat([
    mac(o.dst ?? 'ff:ff:ff:ff:ff:ff'),
    mac(o.src ?? GUEST_MAC),
    hex('0806'),
    hex('0001 0800 06 04'),
    Buffer.from([0, o.op ?? 1]),
    mac(o.sha ?? GUEST_MAC),
    ip4(o.spa ?? GUEST_IP),
    mac('00:00:00:00:00:00'),
    ip4(o.tpa ?? OUR_IP),
  ])
}

interface EchoOptions {
  dstMac?: string
  srcMac?: string
  src?: string
  dst?: string
  id?: number
  seq?: number
  payload?: Buffer
  /** IPv4 options (a multiple of 4 bytes). */
  options?: Buffer
  fragment?: number
  proto?: number
  type?: number
  tos?: number
  /** Bytes of link-layer padding after the datagram. */
  pad?: number
}

function echoRequest(o: EchoOptions = {}): Buffer {
  const payload = o.payload ?? Buffer.from(Array.from({ length: 56 }, (_, i) => (i * 7 + 3) & 0xff))
  const icmp = Buffer.concat([Buffer.from([o.type ?? 8, 0, 0, 0]), Buffer.alloc(4), payload])
  icmp.writeUInt16BE(o.id ?? 0x1234, 4)
  icmp.writeUInt16BE(o.seq ?? 7, 6)
  icmp.writeUInt16BE(checksum(icmp), 2)
  const opts = o.options ?? Buffer.alloc(0)
  const ip = Buffer.alloc(20 + opts.length)
  ip[0] = 0x40 | ((20 + opts.length) / 4)
  ip[1] = o.tos ?? 0
  ip.writeUInt16BE(ip.length + icmp.length, 2)
  ip.writeUInt16BE(0xbeef, 4)
  ip.writeUInt16BE(o.fragment ?? 0x4000, 6) // DF, as Linux sends its pings
  ip[8] = 64
  ip[9] = o.proto ?? 1
  ip4(o.src ?? GUEST_IP).copy(ip, 12)
  ip4(o.dst ?? OUR_IP).copy(ip, 16)
  opts.copy(ip, 20)
  ip.writeUInt16BE(checksum(ip), 10)
  return Buffer.concat([
    mac(o.dstMac ?? OUR_MAC),
    mac(o.srcMac ?? GUEST_MAC),
    hex('0800'),
    ip,
    icmp,
    Buffer.alloc(o.pad ?? 0),
  ])
}

/** An IPv4 frame from the guest to us carrying `l4` as protocol `proto`, its L4 checksum at `sumAt` computed unless `sum` is given. */
function l4Frame(proto: number, l4: Buffer, sumAt: number, sum?: number): Buffer {
  const ip = Buffer.alloc(20)
  ip[0] = 0x45
  ip.writeUInt16BE(20 + l4.length, 2)
  ip.writeUInt16BE(0x4000, 6)
  ip[8] = 64
  ip[9] = proto
  ip4(GUEST_IP).copy(ip, 12)
  ip4(OUR_IP).copy(ip, 16)
  ip.writeUInt16BE(checksum(ip), 10)
  const seg = Buffer.from(l4)
  seg.writeUInt16BE(0, sumAt)
  const pseudo = Buffer.concat([ip4(GUEST_IP), ip4(OUR_IP), Buffer.from([0, proto]), Buffer.from([seg.length >> 8, seg.length & 0xff])])
  seg.writeUInt16BE(sum ?? checksum(Buffer.concat([pseudo, seg])), sumAt)
  return Buffer.concat([mac(OUR_MAC), mac(GUEST_MAC), hex('0800'), ip, seg])
}

function udp(dstPort: number, payload: Buffer, sum?: number): Buffer {
  const h = Buffer.alloc(8)
  h.writeUInt16BE(40000, 0)
  h.writeUInt16BE(dstPort, 2)
  h.writeUInt16BE(8 + payload.length, 4)
  return l4Frame(17, Buffer.concat([h, payload]), 6, sum)
}

function tcp(flags: number, seq: number, ack: number, payload = Buffer.alloc(0), sum?: number, dstPort = 80, srcPort = 40001): Buffer {
  const h = Buffer.alloc(20)
  h.writeUInt16BE(srcPort, 0)
  h.writeUInt16BE(dstPort, 2)
  h.writeUInt32BE(seq, 4)
  h.writeUInt32BE(ack, 8)
  h[12] = 5 << 4
  h[13] = flags
  h.writeUInt16BE(64240, 14)
  return l4Frame(6, Buffer.concat([h, payload]), 16, sum)
}

/** The L4 checksum of a reply frame (IPv4 without options) as a receiver checks it: 0 when right. */
function replyL4Sum(reply: Buffer): number {
  const total = reply.readUInt16BE(16)
  const seg = reply.subarray(34, 14 + total)
  const pseudo = Buffer.concat([reply.subarray(26, 34), Buffer.from([0, reply[23]!]), Buffer.from([seg.length >> 8, seg.length & 0xff])])
  return checksum(Buffer.concat([pseudo, seg]))
}

function responder(options: Partial<ConstructorParameters<typeof Responder>[1]> = {}, port: ResponderPort = new FakePort()) {
  return new Responder(port, { ip: OUR_IP, mac: OUR_MAC, ...options })
}

function replyOf(v: Verdict): Buffer {
  if (v.action === 'ignore') throw new Error(`ignored (${v.reason})`)
  if (v.action === 'no-reply') throw new Error('taken in without a reply')
  return v.reply
}

// ---------------------------------------------------------------------------
// Checksums and parsing

test('internetChecksum matches a known IPv4 header and verifies to zero', (t) => {
  const header = hex('4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7')
  t.is(internetChecksum(header), 0xb861)
  header.writeUInt16BE(0xb861, 10)
  t.is(internetChecksum(header), 0)
  // odd length: the last byte counts as the high byte of a zero-padded word
  t.is(internetChecksum(hex('0102 03')), checksum(hex('0102 0300')))
  t.is(internetChecksum(Buffer.alloc(0)), 0xffff)
})

test('parseMac and parseIpv4 take only well-formed addresses', (t) => {
  t.deepEqual(parseMac('02:0A:bc:00:00:ff'), hex('020abc0000ff'))
  t.deepEqual(parseIpv4('198.18.0.2'), hex('c6120002'))
  for (const bad of ['02:00:00:00:00', '02-00-00-00-00-01', '02:00:00:00:00:0g', '']) {
    t.throws(() => parseMac(bad), { instanceOf: TypeError }, bad)
  }
  for (const bad of ['198.18.0', '198.18.0.256', '198.18.0.02', '198.18.0.2.1', ' 198.18.0.2', '']) {
    t.throws(() => parseIpv4(bad), { instanceOf: TypeError }, bad)
  }
})

test('the constructor refuses bad addresses and options', (t) => {
  t.throws(() => responder({ ip: '198.18.0.300' }), { instanceOf: TypeError })
  t.throws(() => responder({ mac: '01:00:5e:00:00:01' }), { instanceOf: TypeError, message: /unicast/ })
  t.throws(() => responder({ mac: '00:00:00:00:00:00' }), { instanceOf: TypeError, message: /unicast/ })
  t.throws(() => responder({ queue: -1 }), { instanceOf: TypeError })
  t.throws(() => responder({ ttl: 0 }), { instanceOf: TypeError })
  t.throws(() => responder({ minFrameLen: 1.5 }), { instanceOf: TypeError })
  const r = responder()
  t.is(r.ip, OUR_IP)
  t.is(r.mac, OUR_MAC)
  t.false(r.running)
})

// ---------------------------------------------------------------------------
// ARP

const ARP_REPLY = hex(`
  020000000001 020000000002 0806
  0001 0800 06 04 0002
  020000000002 c6120002
  020000000001 c6120001
  000000000000000000000000000000000000`)

test('an ARP request for its IP gets exactly this reply, padded to 60 bytes', (t) => {
  const r = responder()
  const v = r.handle(arpRequest())
  t.is(v.action, 'arp-reply')
  t.deepEqual(replyOf(v), ARP_REPLY)
  t.is(replyOf(v).length, 60)
})

test('an ARP reply is unpadded with minFrameLen 0; padding and a unicast request change nothing else', (t) => {
  const r = responder({ minFrameLen: 0 })
  t.deepEqual(replyOf(r.handle(arpRequest())), ARP_REPLY.subarray(0, 42))
  // a request padded on the wire to 60 bytes, and a unicast one (Linux re-confirming a neighbour)
  t.deepEqual(replyOf(r.handle(Buffer.concat([arpRequest(), Buffer.alloc(18)]))), ARP_REPLY.subarray(0, 42))
  t.deepEqual(replyOf(r.handle(arpRequest({ dst: OUR_MAC }))), ARP_REPLY.subarray(0, 42))
})

test('the ARP reply goes to the sender hardware address of the request', (t) => {
  const r = responder()
  const reply = replyOf(r.handle(arpRequest({ sha: '02:11:22:33:44:55', spa: '198.18.0.9' })))
  t.deepEqual(reply.subarray(0, 6), mac('02:11:22:33:44:55'))
  t.deepEqual(reply.subarray(14 + 18, 14 + 24), mac('02:11:22:33:44:55'))
  t.deepEqual(reply.subarray(14 + 24, 14 + 28), ip4('198.18.0.9'))
})

test('ARP for other IPs, to other MACs, replies and odd kinds are ignored', (t) => {
  const r = responder()
  const cases: [string, Buffer, string][] = [
    ['request for another IP', arpRequest({ tpa: '198.18.0.3' }), 'not-for-us'],
    ['unicast to another MAC', arpRequest({ dst: '02:00:00:00:00:09' }), 'not-for-us'],
    ['an ARP reply', arpRequest({ op: 2 }), 'unsupported'],
    ['RARP-style op 3', arpRequest({ op: 3 }), 'unsupported'],
    ['hardware type 6', (() => { const f = arpRequest(); f.writeUInt16BE(6, 14); return f })(), 'unsupported'],
    ['protocol IPv6', (() => { const f = arpRequest(); f.writeUInt16BE(0x86dd, 16); return f })(), 'unsupported'],
    ['hlen 8', (() => { const f = arpRequest(); f[18] = 8; return f })(), 'malformed'],
    ['multicast sender hardware address', arpRequest({ sha: '01:00:5e:00:00:01' }), 'malformed'],
    ['multicast Ethernet source', arpRequest({ src: '03:00:00:00:00:01' }), 'malformed'],
  ]
  for (const [what, frame, reason] of cases) {
    t.deepEqual(r.handle(frame), { action: 'ignore', reason }, what)
  }
  const s = r.stats()
  t.is(s.ignored, cases.length)
  t.is(s.arpRequests, 0)
})

// ---------------------------------------------------------------------------
// ICMP echo

/** Checks `reply` answers `request` (built with `echoRequest`). */
function assertEchoReply(t: ExecutionContext, request: Buffer, reply: Buffer, o: { ttl?: number; minLen?: number } = {}) {
  const reqIhl = (request[14]! & 0x0f) * 4
  const reqTotal = request.readUInt16BE(16)
  const reqIcmp = request.subarray(14 + reqIhl, 14 + reqTotal)
  const icmpLen = reqIcmp.length
  t.is(reply.length, Math.max(14 + 20 + icmpLen, o.minLen ?? 60), 'frame length')
  t.deepEqual(reply.subarray(0, 6), request.subarray(6, 12), 'to the requester')
  t.deepEqual(reply.subarray(6, 12), mac(OUR_MAC), 'from us')
  t.is(reply.readUInt16BE(12), 0x0800)
  const ip = reply.subarray(14, 34)
  t.is(ip[0], 0x45, 'IPv4, 20-byte header')
  t.is(ip[1], request[15], 'same TOS')
  t.is(ip.readUInt16BE(2), 20 + icmpLen, 'total length')
  t.is(ip.readUInt16BE(6) & 0x3fff, 0, 'not a fragment')
  t.is(ip[8], o.ttl ?? 64, 'TTL')
  t.is(ip[9], 1, 'ICMP')
  t.deepEqual(ip.subarray(12, 16), request.subarray(14 + 16, 14 + 20), 'source = the request destination')
  t.deepEqual(ip.subarray(16, 20), request.subarray(14 + 12, 14 + 16), 'destination = the request source')
  t.is(checksum(ip), 0, 'IPv4 header checksum valid')
  const icmp = reply.subarray(34, 34 + icmpLen)
  t.is(icmp[0], 0, 'echo reply')
  t.is(icmp[1], 0, 'code 0')
  t.is(checksum(icmp), 0, 'ICMP checksum valid')
  t.deepEqual(icmp.subarray(4), reqIcmp.subarray(4), 'same id, seq and data')
  t.true(reply.subarray(34 + icmpLen).every((b) => b === 0), 'zero padding')
}

test('an echo request gets a reply with valid checksums and the same id, seq and data', (t) => {
  const r = responder()
  const request = echoRequest({ id: 0xabcd, seq: 19 })
  const reply = replyOf(r.handle(request))
  t.is(reply.length, 98) // what `ping` sends: 56 data bytes
  assertEchoReply(t, request, reply)
  t.is(reply.readUInt16BE(34 + 4), 0xabcd)
  t.is(reply.readUInt16BE(34 + 6), 19)
  // the request is not modified
  t.deepEqual(request, echoRequest({ id: 0xabcd, seq: 19 }))
})

test('echo replies: odd data lengths, no data, padding after the datagram, IP options, TOS, TTL', (t) => {
  const r = responder({ ttl: 17 })
  const requests = [
    echoRequest({ payload: Buffer.from('abc') }),
    echoRequest({ payload: Buffer.alloc(0) }),
    echoRequest({ payload: Buffer.alloc(1473, 0xa5) }),
    echoRequest({ payload: Buffer.from('x'), pad: 13 }),
    echoRequest({ options: hex('01010100'), tos: 0xb8 }),
  ]
  for (const request of requests) assertEchoReply(t, request, replyOf(r.handle(request)), { ttl: 17 })
  // successive replies carry successive IP identifications
  const a = replyOf(r.handle(echoRequest()))
  const b = replyOf(r.handle(echoRequest()))
  t.is(b.readUInt16BE(18), (a.readUInt16BE(18) + 1) & 0xffff)
})

test('replies verify across a sweep of identifiers, sequence numbers and data', (t) => {
  // Many different sums, carries folded once or more, and the all-ones data words.
  const r = responder()
  for (let k = 0; k < 256; k++) {
    const seq = (k * 257) & 0xffff
    const request = echoRequest({ id: 0xffff - k, seq, payload: Buffer.from([0xff, 0xff, k, 0xff - k, k & 1 ? 0xff : 0]) })
    const reply = replyOf(r.handle(request))
    t.is(checksum(reply.subarray(14, 34)), 0)
    t.is(checksum(reply.subarray(34, 34 + 8 + 5)), 0)
    t.is(reply.readUInt16BE(34 + 6), seq)
  }
})

test('echo requests to other IPs or MACs, and other IP traffic, are ignored', (t) => {
  const r = responder()
  const cases: [string, Buffer, string][] = [
    ['another destination IP', echoRequest({ dst: '198.18.0.3' }), 'not-for-us'],
    ['another destination MAC', echoRequest({ dstMac: '02:00:00:00:00:03' }), 'not-for-us'],
    ['Ethernet broadcast', echoRequest({ dstMac: 'ff:ff:ff:ff:ff:ff' }), 'not-for-us'],
    ['multicast MAC', echoRequest({ dstMac: '01:00:5e:00:00:01' }), 'not-for-us'],
    ['an echo reply', echoRequest({ type: 0 }), 'unsupported'],
    ['a timestamp request', echoRequest({ type: 13 }), 'unsupported'],
    ['GRE', echoRequest({ proto: 47 }), 'unsupported'],
    ['first fragment (MF)', echoRequest({ fragment: 0x2000 }), 'unsupported'],
    ['later fragment (offset)', echoRequest({ fragment: 0x0010 }), 'unsupported'],
    ['IPv6 EtherType', (() => { const f = echoRequest(); f.writeUInt16BE(0x86dd, 12); return f })(), 'unsupported'],
    ['VLAN tag', (() => { const f = echoRequest(); f.writeUInt16BE(0x8100, 12); return f })(), 'unsupported'],
    ['bad IPv4 checksum', (() => { const f = echoRequest(); f[14 + 10]! ^= 1; return f })(), 'bad-checksum'],
    ['bad ICMP checksum', (() => { const f = echoRequest(); f[34 + 2]! ^= 0x80; return f })(), 'bad-checksum'],
    ['corrupted data', (() => { const f = echoRequest(); f[60]! ^= 0x10; return f })(), 'bad-checksum'],
  ]
  for (const [what, frame, reason] of cases) {
    t.deepEqual(r.handle(frame), { action: 'ignore', reason }, what)
  }
  const s = r.stats()
  t.is(s.received, cases.length)
  t.is(s.echoRequests, 0)
  t.is(s.ignored, cases.length)
  t.is(s.ignoredBy['not-for-us'], 4)
  t.is(s.ignoredBy['bad-checksum'], 3)
  t.is(s.ignoredBy.unsupported, 7)
  t.is(s.receivedBroadcast, 1)
})

/** Sets a header field and fixes the IPv4 header checksum, so only the field is wrong. */
function withIpField(f: Buffer, edit: (ip: Buffer) => void): Buffer {
  edit(f.subarray(14, 34))
  const ihl = (f[14]! & 0x0f) * 4
  if (ihl >= 20 && 14 + ihl <= f.length) {
    f.writeUInt16BE(0, 24)
    f.writeUInt16BE(checksum(f.subarray(14, 14 + ihl)), 24)
  }
  return f
}

test('malformed IPv4 headers are ignored as malformed or truncated', (t) => {
  const r = responder()
  const cases: [string, Buffer, string][] = [
    ['version 6 in an IPv4 frame', withIpField(echoRequest(), (ip) => (ip[0] = 0x65)), 'malformed'],
    ['IHL 4', withIpField(echoRequest(), (ip) => (ip[0] = 0x44)), 'malformed'],
    ['IHL 15 beyond the frame', withIpField(echoRequest({ payload: Buffer.alloc(0) }), (ip) => (ip[0] = 0x4f)), 'truncated'],
    ['total length below the header', withIpField(echoRequest(), (ip) => ip.writeUInt16BE(19, 2)), 'malformed'],
    ['total length beyond the frame', withIpField(echoRequest(), (ip) => ip.writeUInt16BE(85, 2)), 'truncated'],
    ['total length leaves no ICMP header', withIpField(echoRequest(), (ip) => ip.writeUInt16BE(27, 2)), 'truncated'],
  ]
  for (const [what, frame, reason] of cases) {
    t.deepEqual(r.handle(frame), { action: 'ignore', reason }, what)
  }
})

// ---------------------------------------------------------------------------
// Truncation and garbage

test('every truncation of an ARP request and an echo request is ignored without throwing', (t) => {
  const r = responder()
  for (const whole of [arpRequest(), echoRequest()]) {
    for (let len = 0; len < whole.length; len++) {
      t.deepEqual(r.handle(whole.subarray(0, len)), { action: 'ignore', reason: 'truncated' }, `${len} of ${whole.length} bytes`)
    }
  }
  const s = r.stats()
  t.is(s.ignored, 42 + 98)
  t.is(s.ignoredBy.truncated, 42 + 98)
  t.is(s.sent, 0)
})

test('random frames and random corruptions never throw and never answer with garbage', (t) => {
  // xorshift32, fixed seed: the same 3000 frames every run
  let x = 0x9e3779b9
  const rnd = () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x
  }
  const r = responder()
  let answered = 0
  for (let i = 0; i < 3000; i++) {
    let f: Buffer
    if (i % 3 === 0) {
      f = Buffer.from(Array.from({ length: rnd() % 128 }, () => rnd() & 0xff))
    } else {
      f = i % 3 === 1 ? arpRequest() : echoRequest()
      const flips = 1 + (rnd() % 3)
      for (let k = 0; k < flips; k++) f[rnd() % f.length]! ^= 1 << (rnd() % 8)
      if (rnd() % 4 === 0) f = f.subarray(0, rnd() % f.length)
    }
    let verdict: Verdict
    try {
      verdict = r.handle(f)
    } catch (err) {
      t.fail(`frame ${i} (${f.toString('hex')}) threw: ${String(err)}`)
      continue
    }
    if (verdict.action === 'ignore') {
      t.true(IGNORE_REASONS.includes(verdict.reason))
      continue
    }
    if (verdict.action === 'no-reply') continue
    answered++
    // whatever got an answer was well-formed enough: the answer is
    t.deepEqual(verdict.reply.subarray(6, 12), mac(OUR_MAC))
    if (verdict.action === 'echo-reply') {
      t.is(checksum(verdict.reply.subarray(14, 34)), 0)
      t.is(checksum(verdict.reply.subarray(34, 34 + verdict.reply.readUInt16BE(16) - 20)), 0)
    } else {
      t.deepEqual(verdict.reply.subarray(14 + 14, 14 + 18), ip4(OUR_IP))
    }
  }
  // flipped bits outside what is checked (ARP sender, padding) still get answers
  t.true(answered > 0)
  t.is(r.stats().received, 3000)
})

test('counters add up: received = answered + ignored', (t) => {
  const r = responder()
  r.handle(arpRequest())
  r.handle(echoRequest())
  r.handle(echoRequest({ dst: '198.18.0.3' }))
  r.handle(Buffer.alloc(3))
  const s = r.stats()
  t.is(s.received, 4)
  t.is(s.receivedBytes, 42 + 98 + 98 + 3)
  t.is(s.receivedBroadcast, 1)
  t.is(s.arpRequests, 1)
  t.is(s.echoRequests, 1)
  t.is(s.ignored, 2)
  t.deepEqual(s.ignoredBy, { truncated: 1, malformed: 0, 'bad-checksum': 0, 'not-for-us': 1, unsupported: 0 })
  // handle() only decides: nothing was sent
  t.is(s.sent, 0)
  r.resetStats()
  t.is(r.stats().received, 0)
})

test('handle() needs a MAC: given, or taken from the port by start()', (t) => {
  const r = new Responder(new FakePort(null), { ip: OUR_IP })
  t.is(r.mac, null)
  t.throws(() => r.handle(arpRequest()), { message: /no MAC/ })
})

// ---------------------------------------------------------------------------
// The receive loop, on a fake port

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Polls `predicate` every 5 ms for at most `ms`. */
async function waitFor(predicate: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > end) return false
    await sleep(5)
  }
  return true
}

class FakePort implements ResponderPort {
  readonly inbox: Buffer[] = []
  readonly sent: { frames: Buffer[]; queue: number | undefined }[] = []
  readonly queuesAsked: (number | undefined)[] = []
  /** How many frames `send` takes per call (the ring's room). */
  room = Infinity
  sendError: Error | undefined
  /** A receive that ignores the abort signal and never returns, until this is resolved. */
  stuck: (() => void) | undefined
  constructor(readonly mac: string | null = OUR_MAC) {}

  async *packets(options: { queue?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer, void, undefined> {
    this.queuesAsked.push(options.queue)
    // bounded like IavfPort.packets: a look at the signal every few ms
    while (options.signal?.aborted !== true) {
      if (this.stuck !== undefined) await new Promise<void>((r) => (this.stuck = r))
      const f = this.inbox.shift()
      if (f === undefined) await sleep(2)
      else yield f
    }
  }

  async send(frames: readonly Buffer[], queue?: number): Promise<number> {
    if (this.sendError !== undefined) throw this.sendError
    const n = Math.min(frames.length, this.room)
    this.sent.push({ frames: frames.slice(0, n), queue })
    return n
  }
}

test('start() answers ARP and pings through the port until stop()', async (t) => {
  const port = new FakePort()
  const r = new Responder(port, { ip: OUR_IP, queue: 0 })
  const running = r.start()
  t.true(r.running)
  t.is(r.mac, OUR_MAC) // from the port
  port.inbox.push(arpRequest(), echoRequest({ seq: 1 }), echoRequest({ dst: '198.18.0.7' }), echoRequest({ seq: 2 }))
  t.true(await waitFor(() => r.stats().received === 4))
  t.true(await waitFor(() => port.sent.length === 3))
  t.deepEqual(port.sent[0]?.frames, [ARP_REPLY])
  assertEchoReply(t, echoRequest({ seq: 1 }), port.sent[1]!.frames[0]!)
  assertEchoReply(t, echoRequest({ seq: 2 }), port.sent[2]!.frames[0]!)
  t.deepEqual(port.sent.map((s) => s.queue), [0, 0, 0])
  t.true(await r.stop())
  await running
  t.false(r.running)
  const s = r.stats()
  t.like(s, { received: 4, arpRequests: 1, echoRequests: 2, ignored: 1, arpReplies: 1, echoReplies: 2, sent: 3, sendDropped: 0 })
  t.is(s.sentBytes, 60 + 98 + 98)
  // stopped means stopped: later frames stay unanswered
  port.inbox.push(arpRequest())
  await sleep(20)
  t.is(port.sent.length, 3)
  t.is(port.inbox.length, 1)
})

test('the loop serves the queue it was given', async (t) => {
  const port = new FakePort()
  const r = new Responder(port, { ip: OUR_IP, queue: 3 })
  const running = r.start()
  port.inbox.push(arpRequest())
  t.true(await waitFor(() => port.sent.length === 1))
  t.deepEqual(port.queuesAsked, [3])
  t.is(port.sent[0]?.queue, 3)
  t.true(await r.stop())
  await running
})

test('a reply the port does not take is counted as dropped, not sent', async (t) => {
  const port = new FakePort()
  port.room = 0
  const r = new Responder(port, { ip: OUR_IP })
  const running = r.start()
  port.inbox.push(echoRequest(), arpRequest())
  t.true(await waitFor(() => r.stats().sendDropped === 2))
  t.like(r.stats(), { echoRequests: 1, arpRequests: 1, sent: 0, echoReplies: 0, arpReplies: 0, sentBytes: 0 })
  t.true(await r.stop())
  await running
})

test('start() rejects when sending fails, and when already running or the port has no MAC', async (t) => {
  const port = new FakePort()
  const r = new Responder(port, { ip: OUR_IP })
  const running = r.start()
  await t.throwsAsync(r.start(), { message: /already running/ })
  port.sendError = new Error('ring gone')
  port.inbox.push(arpRequest())
  await t.throwsAsync(running, { message: 'ring gone' })
  t.false(r.running)
  t.true(await r.stop()) // not running: at once

  await t.throwsAsync(new Responder(new FakePort(null), { ip: OUR_IP }).start(), { message: /no MAC/ })
  await t.throwsAsync(new Responder(new FakePort('01:00:5e:00:00:01'), { ip: OUR_IP }).start(), { instanceOf: TypeError })
})

test('stop() is bounded even when the port never yields again', async (t) => {
  const port = new FakePort()
  const r = new Responder(port, { ip: OUR_IP, stopTimeoutMs: 50 })
  const running = r.start()
  port.stuck = () => {}
  await sleep(10)
  const t0 = Date.now()
  t.false(await r.stop())
  const took = Date.now() - t0
  t.true(took >= 45 && took < 5000, `stop took ${took} ms`)
  // let the fake go: the loop sees the abort and ends
  port.stuck?.()
  await running
  t.false(r.running)
  t.true(await r.stop())
})

test('the responder can start again after stop()', async (t) => {
  const port = new FakePort()
  const r = new Responder(port, { ip: OUR_IP })
  const first = r.start()
  t.true(await r.stop())
  await first
  const second = r.start()
  port.inbox.push(echoRequest())
  t.true(await waitFor(() => port.sent.length === 1))
  t.true(await r.stop())
  await second
  t.is(r.stats().echoReplies, 1)
})

// ---------------------------------------------------------------------------
// On real emulated VFs: two iavf servers joined by the pair back-end, one IavfPort each

test('over a pair of emulated VFs, the responder answers what the other port sends, and every counter agrees', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emudev-responder-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // pair names are process-wide: unique ones for this file
  const a = NativeServer.listenIavf(join(dir, 'a.sock'), { name: 'emu_iavf_rsp0', mac: GUEST_MAC, backend: 'pair:emu_iavf_rsp1' })
  t.teardown(() => a.close())
  const b = NativeServer.listenIavf(join(dir, 'b.sock'), { name: 'emu_iavf_rsp1', mac: OUR_MAC, backend: 'pair:emu_iavf_rsp0' })
  t.teardown(() => b.close())
  const pa = await IavfPort.connect(join(dir, 'a.sock'))
  t.teardown(() => pa.close())
  const pb = await IavfPort.connect(join(dir, 'b.sock'))
  t.teardown(() => pb.close())
  await pa.start()
  await pb.start()
  const r = new Responder(pb, { ip: OUR_IP })
  const running = r.start()
  const requests = [arpRequest(), echoRequest({ seq: 1 }), echoRequest({ dst: '198.18.0.9' }), echoRequest({ seq: 2, payload: Buffer.alloc(1000, 0x5a) })]
  t.is(await pa.send(requests), requests.length)
  const got: Buffer[] = []
  const end = Date.now() + 5000
  while (got.length < 3 && Date.now() < end) got.push(...(await pa.receive({ timeoutMs: 100 })))
  t.is(got.length, 3)
  t.deepEqual(got[0], ARP_REPLY)
  assertEchoReply(t, requests[1]!, got[1]!)
  assertEchoReply(t, requests[3]!, got[2]!)
  t.true(await r.stop())
  await running
  t.deepEqual(await pa.receive({ timeoutMs: 50 }), [], 'nothing else came back')

  const s = r.stats()
  t.like(s, { received: 4, arpRequests: 1, echoRequests: 2, ignored: 1, sent: 3, sendDropped: 0 })
  const sum = (q: DatapathQueueStats[], k: keyof DatapathQueueStats) => q.reduce((n, x) => n + x[k], 0)
  const da = a.datapathStats().queues
  const db = b.datapathStats().queues
  const sentBytes = requests.reduce((n, f) => n + f.length, 0)
  t.is(sum(da, 'txPackets'), 4)
  t.is(sum(da, 'txBytes'), sentBytes)
  t.is(sum(db, 'rxPackets'), s.received)
  t.is(sum(db, 'rxBytes'), s.receivedBytes)
  t.is(s.receivedBytes, sentBytes)
  t.is(sum(db, 'txPackets'), s.sent)
  t.is(sum(db, 'txBytes'), s.sentBytes)
  t.is(sum(da, 'rxPackets'), 3)
  t.is(sum(da, 'rxBytes'), s.sentBytes)
  t.is(sum(da, 'rxDrops') + sum(db, 'rxDrops') + sum(da, 'txErrors') + sum(db, 'txErrors'), 0)
  // and GET_STATS, as each client sees it
  const ga = await pa.stats()
  const gb = await pb.stats()
  t.like(ga, { txBroadcast: 1, txUnicast: 3, txBytes: sentBytes, rxUnicast: 3, rxBytes: s.sentBytes, rxDiscards: 0 })
  t.like(gb, { rxBroadcast: s.receivedBroadcast, rxUnicast: 3, rxBytes: s.receivedBytes, txUnicast: 3, txBytes: s.sentBytes })
})

test('UDP: port 7 is echoed, other ports get an ICMP port unreachable; bad checksums are ignored', (t) => {
  const r = responder()
  const data = Buffer.from('hello through the offload')
  const echo = r.handle(udp(7, data))
  t.is(echo.action, 'udp-echo')
  if (echo.action !== 'udp-echo') return
  const e = echo.reply
  t.deepEqual(e.subarray(0, 6), mac(GUEST_MAC))
  t.deepEqual([e.readUInt16BE(34), e.readUInt16BE(36)], [7, 40000], 'ports swapped')
  t.deepEqual(e.subarray(42, 42 + data.length), data)
  t.is(checksum(e.subarray(14, 34)), 0, 'IPv4 header checksum')
  t.is(replyL4Sum(e), 0, 'UDP checksum')
  // A UDP checksum of 0 means none was computed: accepted.
  t.is(r.handle(udp(7, data, 0)).action, 'udp-echo')

  const probe = udp(33434, Buffer.alloc(12))
  const un = r.handle(probe)
  t.is(un.action, 'port-unreachable')
  if (un.action !== 'port-unreachable') return
  const icmp = un.reply.subarray(34, 14 + un.reply.readUInt16BE(16))
  t.deepEqual([icmp[0], icmp[1]], [3, 3])
  t.is(checksum(icmp), 0, 'ICMP checksum')
  t.deepEqual(icmp.subarray(8), probe.subarray(14, 14 + 20 + 8), 'the IP header and 8 bytes quoted')
  t.is(un.reply[23], 1, 'an ICMP datagram')

  // The pseudo-header sum alone (what Linux leaves for the NIC) is not a checksum.
  t.deepEqual(r.handle(udp(7, data, 0x1234)), { action: 'ignore', reason: 'bad-checksum' })
  const cut = udp(7, data)
  cut.writeUInt16BE(8 + data.length + 10, 38)
  t.deepEqual(r.handle(cut), { action: 'ignore', reason: 'truncated' })
  const short = udp(7, data)
  short.writeUInt16BE(4, 38)
  t.deepEqual(r.handle(short), { action: 'ignore', reason: 'malformed' })
  t.like(r.stats(), { udpDatagrams: 3, ignored: 3 })
  t.is(r.stats().ignoredBy['bad-checksum'], 1)
})

test('TCP: a SYN gets RST+ACK, a segment with ACK gets RST at its ack number, resets are never answered', (t) => {
  const r = responder()
  const syn = r.handle(tcp(0x02, 1000, 0))
  t.is(syn.action, 'tcp-reset')
  if (syn.action !== 'tcp-reset') return
  const a = syn.reply.subarray(34, 54)
  t.deepEqual([a.readUInt16BE(0), a.readUInt16BE(2)], [80, 40001])
  t.is(a.readUInt32BE(4), 0)
  t.is(a.readUInt32BE(8), 1001, 'SYN counts one')
  t.is(a[13], 0x14, 'RST|ACK')
  t.is(replyL4Sum(syn.reply), 0, 'TCP checksum')
  t.is(checksum(syn.reply.subarray(14, 34)), 0)

  const data = r.handle(tcp(0x18, 5000, 777, Buffer.from('GET / HTTP/1.0')))
  t.is(data.action, 'tcp-reset')
  if (data.action !== 'tcp-reset') return
  const b = data.reply.subarray(34, 54)
  t.is(b.readUInt32BE(4), 777, 'SEQ = SEG.ACK')
  t.is(b[13], 0x04, 'RST')
  t.is(replyL4Sum(data.reply), 0)

  t.deepEqual(r.handle(tcp(0x04, 1, 0)), { action: 'no-reply' })
  t.deepEqual(r.handle(tcp(0x02, 1000, 0, Buffer.alloc(0), 0xbeef)), { action: 'ignore', reason: 'bad-checksum' })
  const bad = tcp(0x02, 1, 0)
  bad[34 + 12] = 4 << 4
  t.deepEqual(r.handle(bad), { action: 'ignore', reason: 'malformed' })
  t.like(r.stats(), { tcpSegments: 3, ignored: 2 })
})

test('TCP discard service on port 9: handshake, in-order data counted, out-of-order re-acked, FIN answered', (t) => {
  const r = responder()
  const seg = (flags: number, seq: number, ack: number, data = Buffer.alloc(0)) => tcp(flags, seq, ack, data, undefined, 9)
  const fields = (v: ReturnType<Responder['handle']>) => {
    if (v.action !== 'tcp-ack') return { action: v.action }
    const h = v.reply.subarray(34)
    t.is(replyL4Sum(v.reply), 0, 'TCP checksum of the reply')
    return { action: v.action, seq: h.readUInt32BE(4), ack: h.readUInt32BE(8), flags: h[13], window: h.readUInt16BE(14), hlen: (h[12]! >> 4) * 4 }
  }
  // SYN -> SYN-ACK with the MSS option
  const synAck = r.handle(seg(0x02, 5000, 0))
  t.like(fields(synAck), { action: 'tcp-ack', ack: 5001, flags: 0x12, window: 0xffff, hlen: 24 })
  if (synAck.action !== 'tcp-ack') return
  t.deepEqual([...synAck.reply.subarray(54, 58)], [2, 4, 1460 >> 8, 1460 & 0xff])
  const iss = synAck.reply.readUInt32BE(38)
  // the handshake's ACK needs no answer
  t.is(r.handle(seg(0x10, 5001, iss + 1)).action, 'no-reply')
  // in order: acknowledged and counted
  t.like(fields(r.handle(seg(0x18, 5001, iss + 1, Buffer.alloc(1000, 1)))), { ack: 6001, flags: 0x10 })
  // a gap: re-acknowledges what it has, counts nothing
  t.like(fields(r.handle(seg(0x10, 7001, iss + 1, Buffer.alloc(500)))), { ack: 6001 })
  t.like(fields(r.handle(seg(0x10, 6001, iss + 1, Buffer.alloc(1000)))), { ack: 7001 })
  // FIN (with data): FIN-ACK for all of it
  t.like(fields(r.handle(seg(0x19, 7001, iss + 1, Buffer.alloc(10)))), { seq: iss + 1, ack: 7012, flags: 0x11 })
  // the last ACK closes it: a new segment on it is reset
  t.is(r.handle(seg(0x10, 7012, iss + 2)).action, 'no-reply')
  t.is(r.handle(seg(0x10, 7012, iss + 2, Buffer.alloc(5))).action, 'tcp-reset')
  t.like(r.stats(), { tcpConnections: 1, tcpBytes: 2010, tcpClosed: 1, ignored: 0 })
  // data on a connection it never accepted: reset
  t.is(r.handle(tcp(0x18, 1, 1, Buffer.alloc(3), undefined, 9, 41000)).action, 'tcp-reset')
  // at most 16 at a time
  for (let i = 0; i < 16; i++) t.is(r.handle(tcp(0x02, 1, 0, Buffer.alloc(0), undefined, 9, 50000 + i)).action, 'tcp-ack')
  t.is(r.handle(tcp(0x02, 1, 0, Buffer.alloc(0), undefined, 9, 50016)).action, 'tcp-reset')
  // a reset frees its slot
  t.is(r.handle(tcp(0x04, 2, 0, Buffer.alloc(0), undefined, 9, 50000)).action, 'no-reply')
  t.is(r.handle(tcp(0x02, 1, 0, Buffer.alloc(0), undefined, 9, 50016)).action, 'tcp-ack')
})
