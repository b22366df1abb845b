package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// maxTrailerBytes bounds a chunked message's trailer section.
const maxTrailerBytes = 16 << 10

var errBadChunk = errors.New("h1: malformed chunked encoding")

// copyN copies exactly n bytes from src to dst. It flushes dst before every read that would block, so streamed
// bodies flow without waiting for a full buffer.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int64) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
			if _, err := src.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := min(int64(src.Buffered()), n)
		b, _ := src.Peek(int(k))
		if _, err := dst.Write(b); err != nil {
			return err
		}
		src.Discard(int(k)) //nolint:errcheck // k bytes are buffered
		n -= k
	}
	return nil
}

// copyEOF copies src to dst until src ends.
func copyEOF(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
			if _, err := src.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
		b, _ := src.Peek(src.Buffered())
		if _, err := dst.Write(b); err != nil {
			return err
		}
		src.Discard(len(b)) //nolint:errcheck // buffered
	}
}

// copyChunked relays a chunked body verbatim (chunk extensions and trailer fields included), checking its framing.
func copyChunked(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return errBadChunk
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if size == 0 {
			return copyTrailers(dst, src)
		}
		if err := copyN(dst, src, size); err != nil {
			return err
		}
		crlf, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		if !bytes.Equal(crlf, []byte("\r\n")) && !bytes.Equal(crlf, []byte("\n")) {
			return errBadChunk
		}
		if _, err := dst.Write(crlf); err != nil {
			return err
		}
	}
}

func copyTrailers(dst *bufio.Writer, src *bufio.Reader) error {
	total := 0
	for {
		line, err := src.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		total += len(line)
		if total > maxTrailerBytes {
			return errBadChunk
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) > 0 {
			colon := bytes.IndexByte(trimmed, ':')
			if colon <= 0 || !isToken(trimmed[:colon]) {
				return errBadChunk
			}
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if len(trimmed) == 0 {
			return nil
		}
	}
}

func chunkErr(err error) error {
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return errBadChunk
	case errors.Is(err, io.EOF):
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseChunkSize reads the hexadecimal size of a chunk-size line, ignoring extensions.
func parseChunkSize(line []byte) (int64, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}
