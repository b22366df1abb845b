// Package tcp forwards opaque byte streams between two connections, with half-close and an idle timeout.
package tcp

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Handler serves one accepted connection; it owns conn and closes it.
type Handler interface {
	ServeTCP(conn net.Conn)
}

// Counter receives byte counts as they move (prometheus.Counter satisfies it).
type Counter interface {
	Add(float64)
}

// Options tune Forward. The zero value forwards without idle timeout or counting.
type Options struct {
	// IdleTimeout closes both connections when no byte moved in either direction for this long. 0 disables it.
	IdleTimeout time.Duration
	// ClientReader, when set, is read instead of the client connection (it holds bytes already peeked by detection).
	ClientReader io.Reader
	// Sent counts bytes from client to server; Received counts bytes from server to client. Either may be nil.
	Sent, Received Counter
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// BufferSize is the size of each copy buffer.
const BufferSize = 32 << 10

var buffers = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// ErrIdle reports that Forward closed the connections after Options.IdleTimeout without traffic.
var ErrIdle = errors.New("tcp: idle timeout")

// Forward copies client→server and server→client until both directions end, then closes both connections. When one
// side finishes sending (EOF), Forward half-closes the other side's write direction and keeps copying the other way.
// A read or write error in either direction closes both connections. It returns the bytes copied each way and the
// first error other than EOF.
func Forward(client, server net.Conn, o Options) (sent, received int64, err error) {
	now := o.Now
	if now == nil {
		now = time.Now
	}
	f := &forwarder{idle: o.IdleTimeout, now: now}
	f.touch()
	cr := io.Reader(client)
	if o.ClientReader != nil {
		cr = o.ClientReader
	}
	var (
		wg      sync.WaitGroup
		recvErr error
	)
	wg.Go(func() {
		received, recvErr = f.copy(client, server, server, o.Received)
		f.finish(client, server, recvErr)
	})
	sent, err = f.copy(server, cr, client, o.Sent)
	f.finish(server, client, err)
	wg.Wait()
	client.Close()
	server.Close()
	if first := f.first.Load(); first != nil {
		// The direction that failed first explains the end; the other one only saw the connections closed.
		return sent, received, *first
	}
	return sent, received, nil
}

type forwarder struct {
	idle  time.Duration
	now   func() time.Time
	last  atomic.Int64 // unix nanoseconds of the last byte moved
	first atomic.Pointer[error]
}

func (f *forwarder) touch() { f.last.Store(f.now().UnixNano()) }

// finish ends one direction: on EOF it half-closes dst's write side; on error it closes both connections so the other
// direction stops too.
func (f *forwarder) finish(dst, src net.Conn, err error) {
	if err != nil {
		f.first.CompareAndSwap(nil, &err)
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
}

// copy moves bytes from r (reading deadlines on rc) to dst until EOF or an error.
func (f *forwarder) copy(dst net.Conn, r io.Reader, rc net.Conn, count Counter) (int64, error) {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	var total int64
	if f.idle > 0 {
		rc.SetReadDeadline(f.now().Add(f.idle)) //nolint:errcheck // a failure shows up on the read
	}
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if f.idle > 0 {
				f.touch()
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if count != nil {
				count.Add(float64(w))
			}
			if werr != nil {
				return total, werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return total, nil
		case f.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			last := time.Unix(0, f.last.Load())
			if f.now().Sub(last) >= f.idle {
				return total, ErrIdle
			}
			rc.SetReadDeadline(last.Add(f.idle)) //nolint:errcheck // a failure shows up on the read
		default:
			return total, err
		}
	}
}
