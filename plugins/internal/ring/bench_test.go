package ring

import (
	"io"
	"os"
	"os/exec"
	"testing"
)

// pingPong sends 4 KiB on out and reads 4 KiB from in, b.N times: one
// round trip per operation, through whatever echoes between the two.
func pingPong(b *testing.B, out, in *Ring) {
	msg, reply := make([]byte, 4<<10), make([]byte, 4<<10)
	b.ResetTimer()
	for range b.N {
		if _, err := out.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(in, reply); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}

// BenchmarkPingPong4KiB: a 4 KiB round trip through two rings, echoed by
// a goroutine of this process.
func BenchmarkPingPong4KiB(b *testing.B) {
	out, echoIn := pair(b, 1<<20)
	echoOut, in := pair(b, 1<<20)
	go io.CopyBuffer(echoOut, echoIn, make([]byte, 256<<10))
	pingPong(b, out, in)
}

// BenchmarkPingPong4KiBCrossProcess: the same, echoed by another process
// (this test binary again, TestHelperEcho), as between georepl and a
// plugin: every wake-up crosses processes.
func BenchmarkPingPong4KiBCrossProcess(b *testing.B) {
	var files []*os.File
	for range 2 {
		f, err := Create(1 << 20)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		files = append(files, f.List()...)
	}
	out, err := Open(FilesFrom(files[0:3]))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Abort()
	in, err := Open(FilesFrom(files[3:6]))
	if err != nil {
		b.Fatal(err)
	}
	defer in.Abort()
	echo := exec.Command(os.Args[0], "-test.run=^TestHelperEcho$")
	echo.Env = append(os.Environ(), "GEOREPL_RING_ECHO=1")
	echo.ExtraFiles = files // descriptors 3 to 8
	echo.Stderr = os.Stderr
	if err := echo.Start(); err != nil {
		b.Fatal(err)
	}
	defer echo.Wait()
	defer out.CloseWrite() // the echo reads EOF and exits
	pingPong(b, out, in)
}

// TestHelperEcho is not a test: BenchmarkPingPong4KiBCrossProcess runs
// the test binary again to echo what one ring (descriptors 3 to 5)
// carries into another (6 to 8).
func TestHelperEcho(t *testing.T) {
	if os.Getenv("GEOREPL_RING_ECHO") == "" {
		t.Skip("helper process of BenchmarkPingPong4KiBCrossProcess")
	}
	var files []*os.File
	for fd := range 6 {
		files = append(files, os.NewFile(uintptr(3+fd), "ring"))
	}
	in, err := Open(FilesFrom(files[0:3]))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Open(FilesFrom(files[3:6]))
	if err != nil {
		t.Fatal(err)
	}
	io.CopyBuffer(out, in, make([]byte, 256<<10))
	out.CloseWrite()
}
