/**
 * `npm run demo`: shows that the package and its native addon are installed
 * and loadable.
 */
import { nativeVersion } from './index'

console.log(`emudev native addon ${nativeVersion()} loaded`)
