/**
 * `npm run bench:ts-device`: the 4-byte register round trip through a TypeScript
 * handler, against the native Rust device, in the same run.
 *
 * This process serves the TypeScript edu (`examples/edu.ts`) on a temporary
 * socket, then runs the Rust control-path benchmark
 * (`cargo bench -p emudev-benches --bench vfio_user`) with
 * `EMUDEV_BENCH_PEER=<socket>,region=0,offset=4`: it times the same 4-byte
 * REGION_READ / REGION_WRITE loops (the liveness register) against its own
 * native edu and against this process, alternating run by run, and prints
 * the native rate as a multiple of the peer's. Since both loops are serial
 * round trips, that is also the TypeScript device's latency as a multiple of
 * the native one; the target is at most 2x.
 *
 * The JavaScript thread stays idle (it only awaits the benchmark), so every
 * handler call is answered as soon as it is queued. `EMUDEV_BENCH_SECS`,
 * `EMUDEV_BENCH_RUNS` and `EMUDEV_BENCH_PIN` pass through to the benchmark;
 * `EMUDEV_BENCH_STRICT=1` makes a ratio above 2 fail the run;
 * `EMUDEV_HANDLER_SPIN_US` sets how long the server thread polls for a
 * handler's answer before sleeping (default 40; 0: no polling).
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { EduDevice } from '../examples/edu'

const root = join(__dirname, '..')
const TARGET = 2

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'emudev-bench-ts-'))
  const sock = join(dir, 'edu-ts.sock')
  const device = new EduDevice('emu_edu_ts')
  try {
    await device.listen(sock)
    console.log(`bench:ts-device: TypeScript edu listening on ${sock} (node ${process.version}, pid ${process.pid})`)
    const env = { ...process.env, EMUDEV_BENCH_PEER: `${sock},region=0,offset=4` }
    const child = spawn('cargo', ['bench', '-p', 'emudev-benches', '--bench', 'vfio_user'], {
      cwd: root,
      env,
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk
      process.stdout.write(chunk)
    })
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)))
    if (code !== 0) {
      console.error(`bench:ts-device: the benchmark exited with ${code}`)
      return 1
    }
    const stats = device.stats()
    console.log(
      `\nbench:ts-device: TypeScript edu answered ${stats.handlerCalls} handler calls ` +
        `(${stats.handlerErrors} failed, ${stats.routedJobs} routed device operations)`,
    )
    let over = false
    for (const line of out.split('\n')) {
      const m = /^(REGION_READ 4 B|REGION_WRITE 4 B|DMA_MAP\+UNMAP 64 KiB)\s+ratio emudev \/ peer\s+([0-9.]+)x/.exec(line)
      if (m === null) continue
      const ratio = Number(m[2])
      const trapped = m[1] !== 'DMA_MAP+UNMAP 64 KiB'
      if (trapped && ratio > TARGET) over = true
      const note = trapped ? (ratio <= TARGET ? `within the ${TARGET}x target` : `ABOVE the ${TARGET}x target`) : 'no handler on this path'
      console.log(`bench:ts-device: ${m[1].padEnd(21)} TypeScript latency = ${ratio.toFixed(2)} x native (${note})`)
    }
    return over && process.env.EMUDEV_BENCH_STRICT === '1' ? 1 : 0
  } finally {
    await device.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    console.error(`bench:ts-device: ${err instanceof Error ? err.message : String(err)}`)
    process.exitCode = 1
  },
)
