//go:build linux && amd64 && !purego

package gemm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

// Linux's arch_prctl codes for extended state permissions
// (arch/x86/include/uapi/asm/prctl.h) and the tile data component.
const (
	archGetXcompPerm = 0x1022
	archReqXcompPerm = 0x1023
	xfeatureTileData = 18
)

// amxAvailable reports whether the AMX kernel may run: CPUID announces
// AMX-TILE and AMX-BF16, and Linux grants this process the tile data
// state (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)); without that
// permission the first tile instruction faults. The error says which
// check failed. Asking again once granted is harmless.
func amxAvailable() error {
	var errs []error
	if !cpu.X86.HasAMXTile || !cpu.X86.HasAMXBF16 {
		errs = append(errs, errors.New("CPUID reports no AMX-TILE/AMX-BF16"))
	}
	if !hasAVX512() {
		errs = append(errs, errors.New("no AVX-512 (the AMX kernel scales C with it)"))
	}
	// Asked even when CPUID says no, so the reason names the OS's answer
	// too (a hypervisor may hide the bits and the kernel refuse the state).
	if _, _, e := unix.Syscall(unix.SYS_ARCH_PRCTL, archReqXcompPerm, xfeatureTileData, 0); e != 0 {
		errs = append(errs, fmt.Errorf("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA): %v", e))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	var mask uint64
	if _, _, e := unix.Syscall(unix.SYS_ARCH_PRCTL, archGetXcompPerm, uintptr(unsafe.Pointer(&mask)), 0); e != 0 {
		return fmt.Errorf("arch_prctl(ARCH_GET_XCOMP_PERM): %v", e)
	}
	if mask&(1<<xfeatureTileData) == 0 {
		return fmt.Errorf("arch_prctl granted XTILEDATA but the permitted mask is %#x", mask)
	}
	return nil
}
