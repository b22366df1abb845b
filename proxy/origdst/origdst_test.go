//go:build linux

package origdst

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseSockaddr(t *testing.T) {
	v4 := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(v4, unix.AF_INET)
	binary.BigEndian.PutUint16(v4[2:], 8080)
	copy(v4[4:], []byte{10, 96, 0, 1})
	v6 := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(v6, unix.AF_INET6)
	binary.BigEndian.PutUint16(v6[2:], 443)
	a6 := netip.MustParseAddr("fd00::1").As16()
	copy(v6[8:], a6[:])
	tests := []struct {
		name    string
		in      []byte
		want    string
		wantErr bool
	}{
		{"ipv4", v4, "10.96.0.1:8080", false},
		{"ipv6", v6, "[fd00::1]:443", false},
		{"short", v4[:1], "", true},
		{"truncated v6", v6[:10], "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSockaddr(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if !tt.wantErr && got.String() != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestGetWithoutRedirect checks that a connection no rule redirected yields an error or its own local address (which
// the proxy then refuses as a loop), never some other address.
func TestGetWithoutRedirect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := Get(s)
	if err == nil && got.String() != s.LocalAddr().String() {
		t.Fatalf("original destination %s of an unredirected connection to %s", got, s.LocalAddr())
	}
}
