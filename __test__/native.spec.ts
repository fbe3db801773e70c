import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { native, isNativeError, nativeVersion, errnoName } from '../src/index'

const pkg = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }

test('the binding loads from the generated loader', (t) => {
  t.is(typeof native.nativeVersion, 'function')
  t.is(native.__napiBindingTarget, 'native')
})

test('native version matches package.json', (t) => {
  t.is(nativeVersion(), pkg.version)
})

test('errnoName maps errno numbers to names', (t) => {
  t.is(errnoName(22), 'EINVAL')
  t.is(errnoName(1), 'EPERM')
  t.is(errnoName(104), 'ECONNRESET')
})

test('native errors carry a stable code', (t) => {
  for (const bad of [0, -22, 9999, 2.5, Number.NaN, 2 ** 31]) {
    const err = t.throws(() => errnoName(bad))
    t.true(isNativeError(err, 'ERR_EMUDEV_INVALID_ARG'), `errnoName(${bad}) threw ${String(err)}`)
    t.is((err as { code?: unknown }).code, 'ERR_EMUDEV_INVALID_ARG')
  }
  const err = t.throws(() => errnoName(9999))
  t.is(err?.message, 'unknown errno 9999')
})

test('a wrong argument type is rejected by napi before our code runs', (t) => {
  // napi's own argument checks use napi status names, not our ERR_ codes.
  const err = t.throws(() => (native.errnoName as (x: unknown) => string)('22'))
  t.false(isNativeError(err))
})

test('isNativeError recognises only the addon codes', (t) => {
  const withCode = (code: string) => Object.assign(new Error('x'), { code })
  t.true(isNativeError(withCode('ERR_VFU_EINVAL')))
  t.true(isNativeError(withCode('ERR_VFU_EINVAL'), 'ERR_VFU_EINVAL'))
  t.false(isNativeError(withCode('ERR_VFU_EINVAL'), 'ERR_VFU_EIO'))
  t.true(isNativeError(withCode('ERR_VFU_UNKNOWN')))
  t.false(isNativeError(withCode('ENOENT')))
  t.false(isNativeError(withCode('ERR_INVALID_ARG_TYPE')))
  t.false(isNativeError({ code: 'ERR_VFU_EINVAL' }))
})
