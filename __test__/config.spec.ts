import test from 'ava'

import { parseVdev, parseVdevList, VdevError, VDEV_ERROR_CODE, MAX_SOCKET_PATH_BYTES, IAVF_MTU } from '../src/config'

function rejects(t: import('ava').ExecutionContext, vdev: string, message: string | RegExp): void {
  const err = t.throws(() => parseVdev(vdev), { instanceOf: VdevError })
  if (typeof message === 'string') t.is(err?.message, message)
  else t.regex(err?.message ?? '', message)
  t.is(err?.code, VDEV_ERROR_CODE)
  t.is(err?.vdev, vdev)
}

test('parses an edu device', (t) => {
  t.deepEqual(parseVdev('emu_edu0,sock=/tmp/edu.sock'), {
    name: 'emu_edu0',
    driver: 'emu_edu',
    instance: 0,
    args: { sock: '/tmp/edu.sock' },
  })
})

test('parses an iavf device with every key, converting numbers and lower-casing the MAC', (t) => {
  t.deepEqual(parseVdev('emu_iavf12,sock=/run/vf.sock,queues=16,mac=02:AB:cd:00:00:01,mtu=9702,backend=loopback'), {
    name: 'emu_iavf12',
    driver: 'emu_iavf',
    instance: 12,
    args: { sock: '/run/vf.sock', queues: 16, mac: '02:ab:cd:00:00:01', mtu: 9702, backend: 'loopback' },
  })
})

test('parses an iavf client and keeps "=" inside values', (t) => {
  t.deepEqual(parseVdev('iavf_client3,path=/tmp/a=b.sock'), {
    name: 'iavf_client3',
    driver: 'iavf_client',
    instance: 3,
    args: { path: '/tmp/a=b.sock' },
  })
})

test('an iavf client may leave out its instance number, as in the seed', (t) => {
  t.deepEqual(parseVdev('iavf_client,path=/tmp/sock1,queues=16'), {
    name: 'iavf_client',
    driver: 'iavf_client',
    instance: 0,
    args: { path: '/tmp/sock1', queues: 16 },
  })
  rejects(t, 'iavf_client,path=/s,queues=17', "bad value '17' for 'queues' of iavf_client (expected an integer 1-16)")
  rejects(t, 'iavf_client,path=/s,mac=02:00:00:00:00:01', "unknown key 'mac' for iavf_client (allowed: path, queues)")
})

test('the iavf MTU range is the device\'s (68-9702)', (t) => {
  t.deepEqual(IAVF_MTU, { min: 68, max: 9702 })
})

test('queues accepts both ends of 1-16', (t) => {
  for (const q of [1, 16]) {
    const dev = parseVdev(`emu_iavf0,sock=/s,queues=${q}`)
    t.is(dev.driver === 'emu_iavf' ? dev.args.queues : undefined, q)
  }
})

test('rejects a missing required key', (t) => {
  rejects(t, 'emu_edu0', "missing required key 'sock' for emu_edu0 (e.g. emu_edu0,sock=/tmp/emu_edu0.sock)")
  rejects(t, 'emu_iavf1,queues=4', /^missing required key 'sock' for emu_iavf1/)
  rejects(t, 'iavf_client0', /^missing required key 'path' for iavf_client0/)
})

test('rejects an unknown key and lists the allowed ones', (t) => {
  rejects(t, 'emu_edu0,sock=/tmp/e.sock,foo=1', "unknown key 'foo' for emu_edu0 (allowed: sock)")
  rejects(t, 'emu_iavf0,sock=/s,path=/p', "unknown key 'path' for emu_iavf0 (allowed: sock, queues, mac, mtu, backend, doorbells)")
  rejects(t, 'emu_edu0,sock=/s,__proto__=x', "unknown key '__proto__' for emu_edu0 (allowed: sock)")
})

test('rejects queues out of range or not a plain integer', (t) => {
  for (const q of ['0', '17', '-1', '1.5', '0x4', '4 ', '', '99999999999999999999']) {
    const vdev = `emu_iavf0,sock=/s,queues=${q}`
    const expected = q === '' ? "empty value for key 'queues' of emu_iavf0" : `bad value '${q}' for 'queues' of emu_iavf0 (expected an integer 1-16)`
    rejects(t, vdev, expected)
  }
})

test('rejects mtu out of range', (t) => {
  rejects(t, 'emu_iavf0,sock=/s,mtu=67', "bad value '67' for 'mtu' of emu_iavf0 (expected an integer 68-9702)")
  rejects(t, 'emu_iavf0,sock=/s,mtu=9703', /^bad value '9703' for 'mtu'/)
})

test('rejects malformed, multicast and all-zero MACs', (t) => {
  for (const mac of ['02:00:00:00:00', '02:00:00:00:00:00:01', '02-00-00-00-00-01', '0g:00:00:00:00:01', '2:0:0:0:0:1']) {
    rejects(t, `emu_iavf0,sock=/s,mac=${mac}`, `bad value '${mac}' for 'mac' of emu_iavf0 (expected a MAC like 02:00:00:00:00:01)`)
  }
  rejects(t, 'emu_iavf0,sock=/s,mac=01:00:5e:00:00:01', "'mac' for emu_iavf0 is a multicast address: 01:00:5e:00:00:01")
  rejects(t, 'emu_iavf0,sock=/s,mac=00:00:00:00:00:00', "'mac' for emu_iavf0 is the all-zero address")
})

test('rejects bad device names', (t) => {
  rejects(t, '', 'empty device string')
  rejects(t, ',sock=/s', 'missing device name before the first comma')
  rejects(t, 'emu_edu,sock=/s', "device name 'emu_edu' lacks an instance number (e.g. emu_edu0)")
  rejects(t, 'emu_edu01,sock=/s', "instance number of 'emu_edu01' has a leading zero")
  rejects(t, 'virtio0,sock=/s', "unknown driver 'virtio' in 'virtio0' (known: emu_edu, emu_iavf, iavf_client)")
  rejects(t, 'Emu-Edu0,sock=/s', /^bad device name 'Emu-Edu0'/)
  rejects(t, `emu_edu${'1'.repeat(60)},sock=/s`, /is longer than 63 characters$/)
})

test('rejects malformed arguments', (t) => {
  rejects(t, 'emu_edu0,sock=/s,', "empty argument in 'emu_edu0,sock=/s,' (stray comma?)")
  rejects(t, 'emu_edu0,sock', "argument 'sock' for emu_edu0 has no value (expected sock=...)")
  rejects(t, 'emu_edu0,sock=', "empty value for key 'sock' of emu_edu0")
  rejects(t, 'emu_edu0,sock=/a,sock=/b', "duplicate key 'sock' for emu_edu0")
})

test('rejects socket paths too long for sun_path or containing NUL', (t) => {
  const longest = '/' + 'a'.repeat(MAX_SOCKET_PATH_BYTES - 1)
  t.is(parseVdev(`emu_edu0,sock=${longest}`).name, 'emu_edu0')
  rejects(t, `emu_edu0,sock=${longest}a`, `value of 'sock' for emu_edu0 is 108 bytes; a UNIX socket path is at most 107`)
  // Multi-byte characters count in bytes, not UTF-16 units.
  rejects(t, `emu_edu0,sock=/${'é'.repeat(54)}`, /is 109 bytes/)
  rejects(t, 'iavf_client0,path=/tmp/a\0b', "value of 'path' for iavf_client0 contains a NUL byte")
})

test('parseVdevList accepts distinct devices', (t) => {
  const devs = parseVdevList(['emu_edu0,sock=/tmp/a.sock', 'emu_iavf0,sock=/tmp/b.sock'])
  t.deepEqual(
    devs.map((d) => d.name),
    ['emu_edu0', 'emu_iavf0'],
  )
})

test('parseVdevList rejects duplicate names and shared sockets', (t) => {
  const dupName = t.throws(() => parseVdevList(['emu_edu0,sock=/a', 'emu_edu0,sock=/b']), { instanceOf: VdevError })
  t.is(dupName?.message, "duplicate device name 'emu_edu0'")
  t.is(dupName?.vdev, 'emu_edu0,sock=/b')
  const shared = t.throws(() => parseVdevList(['emu_edu0,sock=/a', 'emu_iavf0,sock=/a']), { instanceOf: VdevError })
  t.is(shared?.message, "socket '/a' is used by both emu_edu0 and emu_iavf0")
})
