// Unit tests of the real-driver harness's pure parts (guest/apt.ts, guest/trace.ts).
// The harness itself needs root and QEMU: `npm run test:guest`.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test, { type ExecutionContext } from 'ava'

import { findMirrors, MirrorError, sourceUris } from '../../guest/apt'
import { QemuTrace } from '../../guest/trace'

function aptDir(t: ExecutionContext, files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'emudev-apt-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'sources.list.d'))
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  return dir
}

const DEB822 = `Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`

test('findMirrors reads a deb822 .sources file and trims the trailing slash', (t) => {
  const dir = aptDir(t, { 'sources.list.d/debian.sources': DEB822 })
  t.deepEqual(findMirrors(dir, {}), {
    mirror: 'http://mirror.example/debian',
    security: 'http://mirror.example/debian-security',
    source: join(dir, 'sources.list.d', 'debian.sources'),
  })
})

test('findMirrors reads one-line sources with options and derives the security archive', (t) => {
  const dir = aptDir(t, {
    'sources.list': '# deb http://commented.example/debian bookworm main\n' +
      'deb [arch=amd64 signed-by=/k.gpg] https://m.example/pub/debian bookworm main\n',
  })
  const m = findMirrors(dir, {})
  t.is(m.mirror, 'https://m.example/pub/debian')
  t.is(m.security, 'https://m.example/pub/debian-security')
})

test('findMirrors skips disabled stanzas, deb-src, other repositories and files apt does not read', (t) => {
  const dir = aptDir(t, {
    'sources.list.d/a.sources': 'Types: deb\nURIs: http://off.example/debian\nSuites: x\nEnabled: no\n\n' +
      'Types: deb-src\nURIs: http://src.example/debian\nSuites: x\n',
    'sources.list.d/b.list': 'deb https://deb.nodesource.example/node_20.x nodistro main\n',
    'sources.list.d/c.list.disabled': 'deb http://disabled.example/debian bookworm main\n',
  })
  const err = t.throws(() => findMirrors(dir, {}), { instanceOf: MirrorError })
  t.regex(err.message, /EMUDEV_DEBIAN_MIRROR/)
})

test('findMirrors prefers the environment', (t) => {
  const dir = aptDir(t, { 'sources.list.d/debian.sources': DEB822 })
  const m = findMirrors(dir, { EMUDEV_DEBIAN_MIRROR: 'http://env.example/debian/' })
  t.is(m.mirror, 'http://env.example/debian')
  t.is(m.source, 'EMUDEV_DEBIAN_MIRROR')
  t.is(m.security, 'http://mirror.example/debian-security')
})

test('findMirrors throws MirrorError for a directory without sources', (t) => {
  const dir = aptDir(t, {})
  t.throws(() => findMirrors(dir, {}), { instanceOf: MirrorError })
})

test('sourceUris ignores malformed lines', (t) => {
  t.deepEqual(sourceUris('x.list', 'deb\nrpm http://a/debian x\n   \n'), [])
  t.deepEqual(sourceUris('x.sources', 'URIs: http://a/debian\n'), [])
})

test('QemuTrace counts requests, replies, No_reply writes and error replies', (t) => {
  const trace = new QemuTrace()
  const lines = [
    'vfio_user_version  major 0 minor 0 caps: {}',
    'vfio_user_send_write  id 0x0 wrote 0xd6',
    'vfio_user_recv_hdr  (unix:/run/emudev/edu0.sock) id 0x0 cmd 0x1 size 0xaa flags 0x1',
    '1234@1700000000.000001:vfio_user_dma_map  iova 0x0 size 0x10000000 off 0x0 flags 0x3 async_ops 1',
    'vfio_user_send_write  id 0x1 wrote 0x30',
    'vfio_user_recv_hdr  (unix:/run/emudev/edu0.sock) id 0x1 cmd 0x2 size 0x10 flags 0x1',
    'vfio_user_region_rw  region 0 offset 0x4 count 4',
    'vfio_user_send_write  id 0x2 wrote 0x1c',
    'vfio_user_set_irqs  index 0 start 0 count 1 flags 0x24',
    'vfio_user_send_write  id 0x3 wrote 0x20',
    'vfio_user_recv_hdr  (unix:/run/emudev/edu0.sock) id 0x3 cmd 0x8 size 0x10 flags 0x21',
    'vfio_user_recv_hdr  (unix:/run/emudev/edu0.sock) id 0x9 cmd 0xb size 0x20 flags 0x0',
  ]
  for (const l of lines) t.true(trace.feed(l), l)
  t.false(trace.feed('qemu-system-x86_64: warning: something else'))
  t.false(trace.feed(''))
  t.is(trace.sent, 4)
  t.deepEqual([...trace.replies.entries()], [[1, 1], [2, 1], [8, 1]])
  t.is(trace.errorReplies.length, 1)
  t.deepEqual([...trace.serverRequests.entries()], [[11, 1]])
  t.deepEqual([...trace.regionAccesses.entries()], [[0, 1]])
  t.is(trace.dmaMaps, 1)
  const summary = trace.summary().join('\n')
  t.regex(summary, /sent 4 messages; replies: VERSION 1, DMA_MAP 1, DEVICE_SET_IRQS 1; without reply \(No_reply\): 1/)
  t.regex(summary, /server requests: DMA_READ 1/)
  t.regex(summary, /error reply: .*cmd 0x8/)
})
