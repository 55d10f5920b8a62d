// Drives the simulator with Xen Orchestra's own XAPI client (xen-api on npm), the way XO backups do:
// connect, read records, follow an Async task through event.from, enable CBT and list changed blocks.
// Usage: node xo-client.mjs <url> <user> <password> <json-rpc|xml-rpc> <control-url>
// Between two disk snapshots it makes one guest write (65536*5, 1 byte) through the simulator's control API.
// Prints one JSON object on stdout; exits non-zero on any failure.
import { Xapi } from 'xen-api'

const [url, user, password, transport, controlUrl] = process.argv.slice(2)
if (controlUrl === undefined) {
  console.error('usage: node xo-client.mjs <url> <user> <password> <json-rpc|xml-rpc> <control-url>')
  process.exit(2)
}

const xapi = new Xapi({ url, auth: { user, password }, transport, allowUnauthorized: true, eventPollDelay: 1000 })
const timer = setTimeout(() => {
  console.error('timed out')
  process.exit(3)
}, 60_000)

try {
  await xapi.connect()
  const out = { sessionId: xapi.sessionId, poolRef: xapi.pool.$ref }
  const vms = await xapi.getAllRecords('VM')
  const vdis = await xapi.getAllRecords('VDI')
  out.vmNames = vms.map(vm => vm.name_label).sort()
  out.vdiCount = vdis.length

  xapi.watchEvents()
  await xapi.objectsFetched
  const web = vms.find(vm => vm.name_label === 'web-01')
  const vbds = await Promise.all(web.VBDs.map(ref => xapi.getRecord('VBD', ref)))
  const disk = vbds.filter(vbd => vbd.type === 'Disk').sort((a, b) => a.userdevice - b.userdevice)[0].VDI
  out.diskRef = disk

  await xapi.call('VDI.enable_cbt', disk)
  const snapshot = await xapi.callAsync('VM.snapshot', web.$ref, 'xo-snapshot')
  out.snapshotRef = snapshot
  const snapRecord = await xapi.getRecord('VM', snapshot)
  out.snapshotOf = snapRecord.snapshot_of
  out.snapshotIsTemplate = snapRecord.is_a_template

  const snapVbds = await Promise.all(snapRecord.VBDs.map(ref => xapi.getRecord('VBD', ref)))
  const snapDisk = snapVbds.filter(vbd => vbd.type === 'Disk').sort((a, b) => a.userdevice - b.userdevice)[0].VDI
  const diskUuid = await xapi.getField('VDI', disk, 'uuid')
  const write = await fetch(new URL(`sim/vdi/${diskUuid}/write?offset=${65536 * 5}&length=1&seed=42`, controlUrl), { method: 'POST' })
  if (!write.ok) throw new Error('control API write failed: ' + write.status)
  const second = await xapi.call('VDI.snapshot', disk, {})
  out.changedBlocks = await xapi.call('VDI.list_changed_blocks', snapDisk, second)
  out.snapDiskRef = snapDisk
  out.secondRef = second

  console.log(JSON.stringify(out))
  await xapi.disconnect()
  clearTimeout(timer)
  process.exit(0)
} catch (error) {
  console.error(error?.stack ?? String(error))
  console.error(JSON.stringify({ code: error?.code, params: error?.params }))
  process.exit(1)
}
