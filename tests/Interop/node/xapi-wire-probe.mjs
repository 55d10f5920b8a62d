// Drives Xen Orchestra's xen-api client (a real XAPI client nobody here wrote) against a URL and prints what it saw
// as JSON, so the C# interop test can check our XML-RPC / JSON-RPC codec from the other side.
// Usage: node xapi-wire-probe.mjs <url> <xml-rpc|json-rpc>
import { createClient } from 'xen-api'

const [url, transport] = process.argv.slice(2)
const xapi = createClient({
  url,
  auth: { user: 'root', password: 'p<a>ss&"word' },
  transport,
  watchEvents: false,
  allowUnauthorized: false,
})

const out = {}
await xapi.connect()
out.sessionId = xapi.sessionId
out.poolName = xapi.pool.name_label
out.poolMaster = xapi.pool.master
const record = await xapi.call('VDI.get_record', 'OpaqueRef:vdi-1')
out.record = { ...record, snapshot_time: record.snapshot_time instanceof Date ? 'Date:' + record.snapshot_time.toISOString() : record.snapshot_time }
try {
  await xapi.call('VM.start', 'OpaqueRef:vm-1', false, true)
  out.error = null
} catch (error) {
  out.error = { code: error.code, params: error.params }
}
out.echo = await xapi.call('test.echo', 42, 1.5, true, ['a', ''], { k: 'v', n: 7 }, new Date(0), 'tab\there & <b>')
await xapi.disconnect()
console.log(JSON.stringify(out))
