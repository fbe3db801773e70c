/**
 * The Debian mirror for the guest chroot, read from the host's apt sources.
 *
 * Committed files name no mirror: the harness uses the one the host's apt
 * already uses (`/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.list`
 * in the one-line form, `*.sources` in the deb822 form), or the one the
 * environment names (`EMUDEV_DEBIAN_MIRROR`, `EMUDEV_DEBIAN_SECURITY_MIRROR`).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

/** Where to fetch trixie from. */
export interface Mirrors {
  /** The archive, `<scheme>://<host>/.../debian` (no trailing slash). */
  readonly mirror: string
  /** The security archive, `.../debian-security`. */
  readonly security: string
  /** Where `mirror` came from: a file name or the variable's name. */
  readonly source: string
}

/** No Debian mirror could be found. */
export class MirrorError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MirrorError'
  }
}

interface Entry {
  readonly uri: string
  readonly file: string
}

/** The `deb` URIs of one sources file (deb822 when it ends in `.sources`). */
export function sourceUris(file: string, text: string): Entry[] {
  const entries: Entry[] = []
  if (file.endsWith('.sources')) {
    for (const stanza of text.split(/\n[ \t]*\n/)) {
      const fields = new Map<string, string>()
      for (const line of stanza.split('\n')) {
        const m = /^([A-Za-z0-9-]+):[ \t]*(.*)$/.exec(line)
        if (m?.[1] !== undefined && m[2] !== undefined) fields.set(m[1].toLowerCase(), m[2].trim())
      }
      if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue
      if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue
      for (const uri of (fields.get('uris') ?? '').split(/\s+/)) if (uri !== '') entries.push({ uri, file })
    }
  } else {
    for (const line of text.split('\n')) {
      const words = line.replace(/#.*/, '').replace(/\[[^\]]*\]/, ' ').trim().split(/\s+/)
      if (words[0] === 'deb' && words[1] !== undefined) entries.push({ uri: words[1], file })
    }
  }
  return entries
}

/** The sources files apt reads under `aptDir`, in apt's order. */
function sourceFiles(aptDir: string): string[] {
  const files: string[] = []
  if (existsSync(join(aptDir, 'sources.list'))) files.push(join(aptDir, 'sources.list'))
  const dir = join(aptDir, 'sources.list.d')
  if (existsSync(dir)) {
    for (const f of readdirSync(dir).sort()) {
      if (f.endsWith('.list') || f.endsWith('.sources')) files.push(join(dir, f))
    }
  }
  return files
}

/**
 * The mirror: `EMUDEV_DEBIAN_MIRROR` if set, else the first `deb` URI whose
 * path ends in `/debian`. The security archive: `EMUDEV_DEBIAN_SECURITY_MIRROR`,
 * else the first URI ending in `/debian-security`, else the mirror's URI with
 * `-security` appended. Throws {@link MirrorError} when there is no mirror.
 */
export function findMirrors(aptDir = '/etc/apt', env: NodeJS.ProcessEnv = process.env): Mirrors {
  const files = sourceFiles(aptDir)
  const entries = files.flatMap((f) => sourceUris(f, readFileSync(f, 'utf8')))
  const trim = (u: string) => u.replace(/\/+$/, '')
  const uris = entries.map((e) => ({ ...e, uri: trim(e.uri) }))
  const envMirror = env.EMUDEV_DEBIAN_MIRROR === undefined || env.EMUDEV_DEBIAN_MIRROR === '' ? undefined : trim(env.EMUDEV_DEBIAN_MIRROR)
  const found = uris.find((e) => /^https?:\/\/[^/]+(\/.*)?\/debian$/.test(e.uri))
  const mirror = envMirror ?? found?.uri
  if (mirror === undefined) {
    throw new MirrorError(
      `no Debian mirror (a deb line ending in /debian) in ${files.join(', ') || `${aptDir}/sources.list*`};` +
        ' set EMUDEV_DEBIAN_MIRROR',
    )
  }
  const envSecurity = env.EMUDEV_DEBIAN_SECURITY_MIRROR
  const security =
    (envSecurity === undefined || envSecurity === '' ? undefined : trim(envSecurity)) ??
    uris.find((e) => /^https?:\/\/[^/]+(\/.*)?\/debian-security$/.test(e.uri))?.uri ??
    `${mirror}-security`
  return { mirror, security, source: envMirror !== undefined ? 'EMUDEV_DEBIAN_MIRROR' : (found?.file ?? '?') }
}
