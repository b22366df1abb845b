package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DefaultAwaitTimeout bounds AwaitListeners in proxy-init's --await-node-proxy mode: as long as the sidecar's
// startup probe allows for its first certificate.
const DefaultAwaitTimeout = 2 * time.Minute

// AwaitListeners waits until every address in addrs accepts a TCP connection (which is closed at once), trying
// every interval, for at most timeout. In DaemonSet mode, a pod's redirect is installed before the node proxy has
// opened its listeners in the pod's network namespace; waiting here keeps the application from starting before its
// traffic can be carried. The error names each address that never accepted, with its last failure. dial defaults to
// a TCP dial bounded by interval.
func AwaitListeners(ctx context.Context, addrs []string, timeout, interval time.Duration,
	dial func(ctx context.Context, addr string) error) error {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	if dial == nil {
		dial = func(ctx context.Context, addr string) error {
			c, err := (&net.Dialer{Timeout: max(interval, time.Second)}).DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pending := map[string]error{}
	for _, a := range addrs {
		pending[a] = errors.New("not tried")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, a := range addrs {
			if _, ok := pending[a]; !ok {
				continue
			}
			if err := dial(ctx, a); err != nil {
				pending[a] = err
			} else {
				delete(pending, a)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			var missing []string
			for _, a := range addrs {
				if err, ok := pending[a]; ok {
					missing = append(missing, fmt.Sprintf("%s (%v)", a, err))
				}
			}
			return fmt.Errorf("nothing accepted on %s within %s", strings.Join(missing, ", "), timeout)
		case <-t.C:
		}
	}
}
