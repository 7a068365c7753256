package ublk

import (
	"testing"
	"unsafe"
)

// The golden values below were printed by a C program compiled against the
// kernel's uapi headers (linux/io_uring.h, linux/ublk_cmd.h) on x86-64:
// sizeof, offsetof and the _IOWR encodings.

func TestLayouts(t *testing.T) {
	var s sqe
	var p uringParams
	var di devInfo
	var pr params
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(sqe) (SQE128)", unsafe.Sizeof(s), 128},
		{"sqe.cmd_op", unsafe.Offsetof(s.off), 8},
		{"sqe.addr", unsafe.Offsetof(s.addr), 16},
		{"sqe.len", unsafe.Offsetof(s.len), 24},
		{"sqe.poll32_events", unsafe.Offsetof(s.opFlags), 28},
		{"sqe.user_data", unsafe.Offsetof(s.userData), 32},
		{"sqe.buf_index", unsafe.Offsetof(s.bufIndex), 40},
		{"sqe.cmd", unsafe.Offsetof(s.cmd), 48},
		{"sizeof(cqe)", unsafe.Sizeof(cqe{}), 16},
		{"sizeof(io_uring_params)", unsafe.Sizeof(p), 120},
		{"io_uring_params.sq_off", unsafe.Offsetof(p.sqOff), 40},
		{"io_uring_params.cq_off", unsafe.Offsetof(p.cqOff), 80},
		{"sizeof(io_sqring_offsets)", unsafe.Sizeof(sqringOffsets{}), 40},
		{"sizeof(io_cqring_offsets)", unsafe.Sizeof(cqringOffsets{}), 40},

		{"sizeof(ublksrv_ctrl_cmd)", unsafe.Sizeof(ctrlCmd{}), 32},
		{"sizeof(ublksrv_ctrl_dev_info)", unsafe.Sizeof(di), 64},
		{"dev_info.max_io_buf_bytes", unsafe.Offsetof(di.maxIOBufBytes), 8},
		{"dev_info.dev_id", unsafe.Offsetof(di.devID), 12},
		{"dev_info.ublksrv_pid", unsafe.Offsetof(di.ublksrvPID), 16},
		{"dev_info.flags", unsafe.Offsetof(di.flags), 24},
		{"sizeof(ublksrv_io_desc)", unsafe.Sizeof(ioDesc{}), 24},
		{"sizeof(ublksrv_io_cmd)", unsafe.Sizeof(ioCmd{}), 16},
		{"sizeof(ublk_param_basic)", unsafe.Sizeof(paramBasic{}), 32},
		{"sizeof(ublk_param_discard)", unsafe.Sizeof(paramDiscard{}), 20},
		{"ublk_params.basic", unsafe.Offsetof(pr.basic), 8},
		{"ublk_params.discard", unsafe.Offsetof(pr.discard), 40},
		{"ublk_param_basic.max_sectors", unsafe.Offsetof(pr.basic.maxSectors), 8},
		{"ublk_param_basic.dev_sectors", unsafe.Offsetof(pr.basic.devSectors), 16},
		{"ublk_param_discard.max_write_zeroes_sectors", unsafe.Offsetof(pr.discard.maxWriteZeroesSectors), 12},
		{"ublk_param_discard.max_discard_segments", unsafe.Offsetof(pr.discard.maxDiscardSegments), 16},
		{"paramsLen (end of discard)", paramsLen, unsafe.Offsetof(pr.discard) + unsafe.Sizeof(paramDiscard{})},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// ioc is the kernel's _IOC for x86-64.
func ioc(dir, typ, nr, size uint32) uint32 { return dir<<30 | size<<16 | typ<<8 | nr }

func TestOpcodes(t *testing.T) {
	const rw = 3 // _IOC_READ|_IOC_WRITE
	ctrl := uint32(unsafe.Sizeof(ctrlCmd{}))
	io := uint32(unsafe.Sizeof(ioCmd{}))
	for _, c := range []struct {
		name        string
		got, golden uint32
		nr          uint32
		size        uint32
	}{
		{"UBLK_U_CMD_ADD_DEV", cmdAddDev, 0xc0207504, 0x04, ctrl},
		{"UBLK_U_CMD_DEL_DEV", cmdDelDev, 0xc0207505, 0x05, ctrl},
		{"UBLK_U_CMD_START_DEV", cmdStartDev, 0xc0207506, 0x06, ctrl},
		{"UBLK_U_CMD_STOP_DEV", cmdStopDev, 0xc0207507, 0x07, ctrl},
		{"UBLK_U_CMD_SET_PARAMS", cmdSetParams, 0xc0207508, 0x08, ctrl},
		{"UBLK_U_IO_FETCH_REQ", ioFetchReq, 0xc0107520, 0x20, io},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", ioCommitAndFetchReq, 0xc0107521, 0x21, io},
	} {
		if c.got != c.golden {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.golden)
		}
		if enc := ioc(rw, 'u', c.nr, c.size); enc != c.golden {
			t.Errorf("_IOWR('u', %#x, %d) = %#x, want %#x", c.nr, c.size, enc, c.golden)
		}
		if legacy(c.got) != c.nr {
			t.Errorf("legacy(%s) = %#x, want %#x", c.name, legacy(c.got), c.nr)
		}
	}
}

func TestIODesc(t *testing.T) {
	d := ioDesc{opFlags: ioOpWrite | ioFlagFUA, nrSectors: 8, startSector: 3}
	if d.op() != ioOpWrite || !d.fua() || d.off() != 1536 || d.bytes() != 4096 {
		t.Errorf("desc %+v: op %d fua %v off %d bytes %d", d, d.op(), d.fua(), d.off(), d.bytes())
	}
	if (ioDesc{opFlags: ioOpRead}).fua() {
		t.Error("read without flags reports FUA")
	}
}

// TestCommandEncoding checks the bytes a control and an I/O command put in
// the SQE's cmd area, against the uapi layout.
func TestCommandEncoding(t *testing.T) {
	var e sqe
	*(*ctrlCmd)(unsafe.Pointer(&e.cmd[0])) = ctrlCmd{devID: 0x01020304, queueID: 0xffff, len: 64, addr: 0x1122334455667788, data: 42}
	want := []byte{
		4, 3, 2, 1, 0xff, 0xff, 64, 0,
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
		42, 0, 0, 0, 0, 0, 0, 0,
	}
	if got := e.cmd[:len(want)]; string(got) != string(want) {
		t.Errorf("ctrl cmd bytes % x, want % x", got, want)
	}
	e = sqe{}
	*(*ioCmd)(unsafe.Pointer(&e.cmd[0])) = ioCmd{qID: 2, tag: 0x0105, result: -5, addr: 0xabcdef}
	want = []byte{2, 0, 5, 1, 0xfb, 0xff, 0xff, 0xff, 0xef, 0xcd, 0xab, 0, 0, 0, 0, 0}
	if got := e.cmd[:len(want)]; string(got) != string(want) {
		t.Errorf("io cmd bytes % x, want % x", got, want)
	}
}
