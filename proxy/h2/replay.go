package h2

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// retryPicks is how many picks a retry makes to find another endpoint than the one that just failed.
const retryPicks = 3

// replayBody is a stream's request body shared by its attempts: what the attempts read from the client is kept, up
// to limit bytes, so that a later attempt reads it again before reading on. A request can be sent again as long as
// everything read from the client is kept. The first attempt streams without waiting for the body: nothing is
// buffered ahead of the upstream.
type replayBody struct {
	mu       sync.Mutex // held while reading the client
	src      io.Reader
	limit    int
	buf      []byte
	n        int         // bytes read from src
	overflow atomic.Bool // more than limit bytes were read: buf does not hold them all
	eof      bool
	err      error
}

// replayable reports whether every byte read from the client so far is kept. It does not wait for a read in
// progress (a streaming client may send more only after it sees a response).
func (b *replayBody) replayable() bool { return !b.overflow.Load() }

// attempt returns a reader of the body for one attempt.
func (b *replayBody) attempt() *attemptBody { return &attemptBody{b: b} }

var (
	errAttemptEnded  = errors.New("h2: request attempt ended")
	errNotReplayable = errors.New("h2: request body longer than the retry buffer")
)

// attemptBody reads a replayBody for one attempt: kept bytes first, then the client. Close (by the transport, or
// when the attempt is abandoned) ends it.
type attemptBody struct {
	b     *replayBody
	off   int
	ended atomic.Bool
}

// Read implements io.Reader.
func (a *attemptBody) Read(p []byte) (int, error) {
	if a.ended.Load() {
		return 0, errAttemptEnded
	}
	b := a.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case a.ended.Load():
		return 0, errAttemptEnded
	case a.off < len(b.buf):
		n := copy(p, b.buf[a.off:])
		a.off += n
		return n, nil
	case a.off < b.n:
		return 0, errNotReplayable
	case b.eof:
		return 0, io.EOF
	case b.err != nil:
		return 0, b.err
	}
	n, err := b.src.Read(p)
	if n > 0 {
		if !b.overflow.Load() && len(b.buf)+n <= b.limit {
			b.buf = append(b.buf, p[:n]...)
		} else {
			b.overflow.Store(true)
		}
		b.n += n
		a.off += n
	}
	switch {
	case errors.Is(err, io.EOF):
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

// Close ends the attempt's reading.
func (a *attemptBody) Close() error {
	a.ended.Store(true)
	return nil
}
