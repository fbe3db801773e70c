#!/usr/bin/env bash
# pack-check: proves that the npm packages built from this checkout install
# into an empty folder and run without a Rust toolchain on PATH.
#
# It follows the napi-rs v3 release flow for the one target this machine can
# build (linux-x64-gnu):
#   1. `npm run build` (napi build --platform + tsc), unless PACK_CHECK_SKIP_BUILD=1;
#   2. `napi create-npm-dirs` writes npm/<platform>/package.json (os/cpu/libc);
#   3. `napi artifacts` copies emudev.linux-x64-gnu.node into npm/linux-x64-gnu/;
#   4. `npm pack` of the root package (no .node inside: it is the JS facade
#      plus the generated loader) and of npm/linux-x64-gnu (only the .node);
#   5. both tarballs are installed into an empty temp folder with
#      PATH=/usr/bin:/bin (no cargo, no rustc), which is what a user gets
#      once `napi prepublish` has pinned the platform packages as
#      optionalDependencies of the root package;
#   6. `npx emudev --help`, `--version`, a background `npx emudev serve`
#      (native edu) and `npx emudev serve --script edu.ts` (a TypeScript
#      device importing 'emudev'), each inspected with `npx emudev inspect`,
#      then stopped with SIGTERM (the socket must be gone afterwards).
# Every wait is bounded. Prints one "pack-check: OK ..." line on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

say() { printf 'pack-check: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# The toolchain-free PATH: the system bins only. node must be there.
clean_path=/usr/bin:/bin
[[ -x /usr/bin/node ]] || fail "node is not in /usr/bin; this check runs node from PATH=$clean_path"

work=$(mktemp -d "${TMPDIR:-/tmp}/emudev-pack-check.XXXXXX")
stage="$root/.cache/pack-check" # gitignored; napi needs paths inside the project
server_pid=''

# The server runs in its own process group (job control on while it is
# started): `npx` is npm exec -> sh -c -> node, and npm does not pass SIGTERM
# down to node, so the check signals the group, as a terminal or a service
# manager does.
stop_server() {
  local pgid=$server_pid
  [[ -n "$pgid" ]] || return 0
  server_pid=''
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 -- "-$pgid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 -- "-$pgid" 2>/dev/null; then
    kill -KILL -- "-$pgid" 2>/dev/null || true
    wait "$pgid" 2>/dev/null || true
    return 1
  fi
  wait "$pgid" 2>/dev/null || true
  return 0
}
cleanup() {
  stop_server || true
  rm -rf "$work" "$stage"
}
trap cleanup EXIT

# -- 1. build ----------------------------------------------------------------
if [[ "${PACK_CHECK_SKIP_BUILD:-0}" != 1 ]]; then
  say "building (npm run build)"
  timeout 1800 npm run build >&2
fi
addon=emudev.linux-x64-gnu.node
[[ -f "$addon" ]] || fail "$addon is missing: run npm run build"
[[ -f dist/cli.js ]] || fail "dist/cli.js is missing: run npm run build"

# -- 2./3. per-platform package dirs and the artifact --------------------------
napi=(timeout 120 node_modules/.bin/napi)
"${napi[@]}" create-npm-dirs >/dev/null
for p in linux-x64-gnu linux-arm64-gnu linux-x64-musl linux-arm64-musl; do
  [[ -f "npm/$p/package.json" ]] || fail "napi create-npm-dirs did not write npm/$p/package.json"
done
# `napi artifacts` insists on every configured target; only linux-x64-gnu can
# be built here, so point it at a config naming that one target and at a
# staging dir holding only this build (as CI's downloaded artifacts dir would).
mkdir -p "$stage/artifacts"
cp "$addon" "$stage/artifacts/"
printf '{ "binaryName": "emudev", "targets": ["x86_64-unknown-linux-gnu"] }\n' > "$stage/napi.json"
"${napi[@]}" artifacts -c "$stage/napi.json" -o "$stage/artifacts" >/dev/null
[[ -f "npm/linux-x64-gnu/$addon" ]] || fail "napi artifacts did not copy $addon into npm/linux-x64-gnu"
grep -q '"libc"' npm/linux-x64-gnu/package.json || fail "npm/linux-x64-gnu/package.json has no libc field"

# -- 4. pack ------------------------------------------------------------------
# --ignore-scripts: the root `prepare` would rebuild from source.
root_tgz=$(timeout 120 npm pack --ignore-scripts --silent --pack-destination "$work" | tail -n 1)
plat_tgz=$(cd npm/linux-x64-gnu && timeout 120 npm pack --ignore-scripts --silent --pack-destination "$work" | tail -n 1)
[[ -f "$work/$root_tgz" && -f "$work/$plat_tgz" ]] || fail "npm pack did not produce both tarballs"
# Listings are captured first: `tar | grep -q` under pipefail fails on SIGPIPE.
root_list=$(tar -tzf "$work/$root_tgz")
plat_list=$(tar -tzf "$work/$plat_tgz")
if grep -q '\.node$' <<<"$root_list"; then
  fail "$root_tgz carries a .node file; native code belongs in the platform packages"
fi
grep -qx "package/$addon" <<<"$plat_list" || fail "$plat_tgz lacks $addon"
for f in package/index.js package/index.d.ts package/dist/cli.js package/package.json; do
  grep -qx "$f" <<<"$root_list" || fail "$root_tgz lacks $f"
done
say "packed $root_tgz ($(du -k "$work/$root_tgz" | cut -f1) KiB) and $plat_tgz ($(du -k "$work/$plat_tgz" | cut -f1) KiB)"

# -- 5. install without a toolchain -------------------------------------------
app="$work/app"
mkdir -p "$app" "$work/home"
printf '{ "name": "pack-check-app", "version": "1.0.0", "private": true }\n' > "$app/package.json"
# A clean environment: system PATH, a fresh HOME and npm cache.
run() {
  (cd "$app" && env -i HOME="$work/home" PATH="$clean_path" TMPDIR="$work" \
    npm_config_cache="$work/npm-cache" npm_config_update_notifier=false \
    npm_config_fund=false npm_config_audit=false "$@")
}
if run bash -c 'command -v cargo || command -v rustc' >/dev/null; then
  fail "cargo or rustc is still reachable with PATH=$clean_path"
fi
run timeout 300 npm install --no-save "$work/$root_tgz" "$work/$plat_tgz" >/dev/null
[[ -f "$app/node_modules/emudev-linux-x64-gnu/$addon" ]] || fail "the platform package was not installed"
if compgen -G "$app/node_modules/emudev/*.node" >/dev/null; then
  fail "the installed root package carries a .node file"
fi
loaded=$(run timeout 30 node -e "require('emudev'); const m = Object.keys(require.cache).find((k) => k.endsWith('.node')); console.log(m || '')")
[[ "$loaded" == "$app/node_modules/emudev-linux-x64-gnu/$addon" ]] \
  || fail "the loader took the addon from '$loaded', not from the platform package"

# -- 6. run ------------------------------------------------------------------
help=$(run timeout 30 npx --no-install emudev --help)
grep -q 'Usage: emudev' <<<"$help" || fail "npx emudev --help printed: $help"
version=$(run timeout 30 npx --no-install emudev --version)
pkg_version=$(node -p "require('./package.json').version")
grep -q "emudev $pkg_version" <<<"$version" || fail "npx emudev --version printed: $version"

# Starts `npx emudev serve ARGS...` in the background; waits for socket $1.
start_server() {
  local sock=$1 log=$2
  shift 2
  set -m
  run npx --no-install emudev serve "$@" >"$log" 2>&1 &
  server_pid=$!
  set +m
  for _ in $(seq 1 150); do
    [[ -S "$sock" ]] && return 0
    kill -0 -- "-$server_pid" 2>/dev/null || { server_pid=''; fail "emudev serve $* exited early: $(cat "$log")"; }
    sleep 0.1
  done
  fail "emudev serve $* did not create $sock within 15 s: $(cat "$log")"
}
# Inspects socket $1, checks the ids, stops the server and checks the socket is gone.
inspect_and_stop() {
  local sock=$1 log=$2 out
  out=$(run timeout 30 npx --no-install emudev inspect "$sock") || fail "npx emudev inspect $sock failed: $out"
  grep -q '1234:11e8' <<<"$out" || fail "inspect output lacks 1234:11e8: $out"
  stop_server || fail "emudev serve ignored SIGTERM for 10 s: $(cat "$log")"
  [[ ! -e "$sock" ]] || fail "emudev serve left $sock behind after SIGTERM"
}

sock="$work/edu0.sock"
start_server "$sock" "$work/serve-native.log" --vdev "emu_edu0,sock=$sock"
inspect_and_stop "$sock" "$work/serve-native.log"

# A TypeScript device written by the user against the installed package.
sed "s#from '../src/index'#from 'emudev'#" examples/edu.ts > "$app/edu.ts"
grep -q "from 'emudev'" "$app/edu.ts" || fail "could not point examples/edu.ts at the package"
ts_sock="$work/edu-ts.sock"
start_server "$ts_sock" "$work/serve-ts.log" --script edu.ts --sock "$ts_sock"
inspect_and_stop "$ts_sock" "$work/serve-ts.log"

say "OK: $root_tgz + $plat_tgz installed without cargo/rustc; --help, --version, serve (native and --script .ts), inspect (1234:11e8), SIGTERM cleanup all passed"
