// HyperSDK vSphere lab: a file layout that snapshot removal can trust.
//
// Compiled into govmomi's package simulator with `go build -overlay` (see
// lab/vcsim/README.md and lab_cbt.go).
//
// Stock vcsim 0.24.2 removes a snapshot's files by their layoutEx.file *key*
// (snapshot.go, removeSnapshotFiles: every file whose key is the snapshot's dataKey or
// memoryKey is deleted). But its RefreshStorageInfo, which runs at CreateVM and after
// every snapshot removal, rebuilds layoutEx.file from scratch: it drops every entry (it
// stats the datastore path "[ds] dir/file" as if it were a local path, which never
// exists), lists the VM folder again under names without the folder ("[ds] file") and
// numbers the entries 0, 1, 2... in directory order; the disks' files come after them
// under their real names. The remaining snapshots keep the dataKey they got when they
// were created, which now names another entry: whatever file has that number after
// the renumbering. With two disks and three snapshots, removing the last one and then
// the first one deleted "<vm>_1-flat.vmdk"; RemoveAllSnapshots_Task (one
// RefreshStorageInfo per snapshot) deleted disk descriptors.
//
// The lab therefore:
//   - records each snapshot's .vmsn by name when it is created (its dataKey is fresh
//     then: CreateSnapshotTask has just added the file, under the VM's lock);
//   - repairs layoutEx whenever it holds the VM's lock (after every snapshot change,
//     device change and lab write, and just before a RemoveSnapshot_Task runs): entries
//     of missing files are dropped, the folder-less names get their folder back, keys
//     of surviving entries are kept, the disk chains are rebuilt, and every snapshot's
//     dataKey points at its own .vmsn again (or at nothing, -1, if that file is gone or
//     would be a disk file in use by the VM or one of its snapshots);
//   - for RemoveAllSnapshots_Task (no hook runs between its per-snapshot removals),
//     deletes the .vmsn files itself when the VM's snapshot tree is dropped and points
//     every dataKey at nothing before the stock loop runs.
package simulator

import (
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// labSnapFile is the .vmsn of one snapshot (datastore path, "[ds] dir/vm-SnapshotN.vmsn").
type labSnapFile struct {
	vm   types.ManagedObjectReference
	name string
}

// labSnapFiles maps a snapshot to its .vmsn; guarded by Lab.mu.
var labSnapFiles = make(map[types.ManagedObjectReference]labSnapFile)

const labNoFile = int32(-1) // a layoutEx key no file has (stock uses it for memoryKey)

// labLocalFile returns the local path of a datastore path ("" if it has none).
func labLocalFile(vm *VirtualMachine, name string) string {
	local, _, err := labLocalPaths(vm, name)
	if err != nil {
		return ""
	}
	return local
}

func labExists(local string) bool {
	if local == "" {
		return false
	}
	st, err := os.Stat(local)
	return err == nil && st.Mode().IsRegular()
}

// labVMDir is the VM's folder as a datastore path.
func labVMDir(vm *VirtualMachine) *object.DatastorePath {
	p, fault := parseDatastorePath(vm.Config.Files.VmPathName)
	if fault != nil {
		return nil
	}
	if path.Ext(p.Path) == ".vmx" {
		p.Path = path.Dir(p.Path)
	}
	return p
}

// labDiskFilesInUse is the set of disk files (descriptor and flat extent, as datastore
// paths) that a disk of the VM or of one of its snapshots uses.
func labDiskFilesInUse(vm *VirtualMachine) map[string]bool {
	inUse := make(map[string]bool)
	add := func(devices []types.BaseVirtualDevice) {
		for _, d := range devices {
			disk, ok := d.(*types.VirtualDisk)
			if !ok {
				continue
			}
			b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
			if !ok {
				continue
			}
			for _, name := range vdmNames(b.GetVirtualDeviceFileBackingInfo().FileName) {
				inUse[name] = true
			}
		}
	}
	add(vm.Config.Hardware.Device)
	for _, s := range vm.LayoutEx.Snapshot {
		if snap, ok := Map.Get(s.Key).(*VirtualMachineSnapshot); ok {
			add(snap.Config.Hardware.Device)
		}
	}
	return inUse
}

// labRecordSnapshotsLocked records the .vmsn of snapshots not yet known. Only a file
// in the VM's folder of type snapshotData counts (a folder-less name left by
// RefreshStorageInfo never does).
func labRecordSnapshotsLocked(vm *VirtualMachine) {
	dir := labVMDir(vm)
	if dir == nil {
		return
	}
	prefix := dir.String() + "/"
	for _, s := range vm.LayoutEx.Snapshot {
		if _, ok := labSnapFiles[s.Key]; ok {
			continue
		}
		for _, f := range vm.LayoutEx.File {
			if f.Key == s.DataKey && strings.HasPrefix(f.Name, prefix) &&
				strings.HasSuffix(f.Name, ".vmsn") &&
				f.Type == string(types.VirtualMachineFileLayoutExFileTypeSnapshotData) {
				labSnapFiles[s.Key] = labSnapFile{vm: vm.Self, name: f.Name}
				break
			}
		}
	}
}

// labRepairLayoutLocked puts layoutEx right (see the top of this file). The caller
// holds the VM's lock and Lab.mu.
func labRepairLayoutLocked(vm *VirtualMachine) {
	if vm.Config == nil || vm.Runtime.Host == nil || vm.LayoutEx == nil {
		return
	}
	labRecordSnapshotsLocked(vm)
	dir := labVMDir(vm)

	// Entries of files that exist under their name first (they keep their keys), then
	// the folder-less names of RefreshStorageInfo, moved back into the VM's folder.
	var files []types.VirtualMachineFileLayoutExFileInfo
	seen := make(map[string]bool)
	keep := func(f types.VirtualMachineFileLayoutExFileInfo, name, local string) {
		if seen[name] || strings.HasSuffix(name, ".lab-redo") {
			return // the redo log is the lab's own, not a file of the VM
		}
		seen[name] = true
		st, err := os.Stat(local)
		if err != nil {
			return
		}
		f.Name = name
		f.Size, f.UniqueSize = st.Size(), st.Size()
		files = append(files, f)
	}
	var moved []types.VirtualMachineFileLayoutExFileInfo
	for _, f := range vm.LayoutEx.File {
		if local := labLocalFile(vm, f.Name); labExists(local) {
			keep(f, f.Name, local)
		} else {
			moved = append(moved, f)
		}
	}
	for _, f := range moved {
		p, fault := parseDatastorePath(f.Name)
		if fault != nil || dir == nil || strings.Contains(p.Path, "/") || p.Datastore != dir.Datastore {
			continue
		}
		full := object.DatastorePath{Datastore: dir.Datastore, Path: path.Join(dir.Path, p.Path)}
		name := full.String()
		if local := labLocalFile(vm, name); labExists(local) {
			keep(f, name, local)
		}
	}
	vm.LayoutEx.File = files

	// The disk chains (stock's updateDiskLayouts only knows flat VMDK backings).
	flatOnly := true
	for _, d := range vm.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if _, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); !ok {
				flatOnly = false
			}
		}
	}
	if flatOnly {
		_ = vm.updateDiskLayouts()
	}

	keyOf := make(map[string]int32, len(vm.LayoutEx.File))
	for _, f := range vm.LayoutEx.File {
		keyOf[f.Name] = f.Key
	}
	inUse := labDiskFilesInUse(vm)
	for i := range vm.LayoutEx.Snapshot {
		s := &vm.LayoutEx.Snapshot[i]
		s.DataKey, s.MemoryKey = labNoFile, labNoFile
		if rec, ok := labSnapFiles[s.Key]; ok && !inUse[rec.name] {
			if key, ok := keyOf[rec.name]; ok {
				s.DataKey = key
			}
		}
		// The snapshot's disks, with the keys they have now.
		if snap, ok := Map.Get(s.Key).(*VirtualMachineSnapshot); ok {
			var chain []types.VirtualMachineFileLayoutExDiskLayout
			for _, dd := range labDisks(snap.Config.Hardware.Device) {
				var keys []int32
				for _, name := range vdmNames(dd.backing.FileName) {
					if key, ok := keyOf[name]; ok {
						keys = append(keys, key)
					}
				}
				chain = append(chain, types.VirtualMachineFileLayoutExDiskLayout{
					Key:   dd.disk.Key,
					Chain: []types.VirtualMachineFileLayoutExDiskUnit{{FileKey: keys}},
				})
			}
			s.Disk = chain
		}
	}
	vm.LayoutEx.Timestamp = time.Now()
	_ = vm.updateStorage()
}

// labSnapshotsGoneLocked runs when the VM's snapshot tree is dropped (the last
// snapshot removed, or RemoveAllSnapshots_Task before its per-snapshot loop): the lab
// deletes the snapshots' .vmsn files itself, so that the stock loop, whose keys go
// stale after its first RefreshStorageInfo, has nothing to delete (dataKey -1).
func labSnapshotsGoneLocked(vm *VirtualMachine) {
	inUse := labDiskFilesInUse(vm)
	for ref, rec := range labSnapFiles {
		if rec.vm != vm.Self {
			continue
		}
		if !inUse[rec.name] && strings.HasSuffix(rec.name, ".vmsn") {
			if local := labLocalFile(vm, rec.name); labExists(local) {
				_ = os.Remove(local)
			}
		}
		delete(labSnapFiles, ref)
	}
	labRepairLayoutLocked(vm)
}

// labBeforeRemoveSnapshot runs when a RemoveSnapshot_Task is created, before the stock
// code deletes files by key: it makes the keys right. The handler holds the snapshot's
// lock, not the VM's.
func labBeforeRemoveSnapshot(vm *VirtualMachine) {
	Map.WithLock(vm, func() {
		Lab.mu.Lock()
		defer Lab.mu.Unlock()
		labRepairLayoutLocked(vm)
	})
}

// labForgetLocked drops the records of a removed snapshot, or of a removed VM.
func labForgetLocked(ref types.ManagedObjectReference) {
	for snap, rec := range labSnapFiles {
		if snap == ref || rec.vm == ref {
			delete(labSnapFiles, snap)
		}
	}
}

// labTaskUpdated repairs the layout when RemoveAllSnapshots_Task ends: its stock loop
// ran RefreshStorageInfo once per snapshot. The task runs inside the SOAP handler of
// the VM, which holds the VM's lock.
func labTaskUpdated(t *mo.Task, changes []types.PropertyChange) {
	if t.Info.DescriptionId != "VirtualMachine.RemoveAllSnapshots" || t.Info.Entity == nil {
		return
	}
	for _, c := range changes {
		if c.Name != "info.state" {
			continue
		}
		if s := fmt.Sprint(c.Val); s != string(types.TaskInfoStateSuccess) && s != string(types.TaskInfoStateError) {
			return
		}
		if vm, ok := Map.Get(*t.Info.Entity).(*VirtualMachine); ok {
			Lab.mu.Lock()
			labRepairLayoutLocked(vm)
			Lab.mu.Unlock()
		}
		return
	}
}
