package redirect

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParsePortRanges(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{in: "", want: nil},
		{in: " , ,", want: nil},
		{in: "80", want: []PortRange{Port(80)}},
		{in: " 80 , 443,", want: []PortRange{Port(80), Port(443)}},
		{in: "8000-8100", want: []PortRange{{First: 8000, Last: 8100}}},
		{in: "8000 - 8100", want: []PortRange{{First: 8000, Last: 8100}}},
		{in: "1-65535", want: []PortRange{{First: 1, Last: 65535}}},
		{in: "25,3306,8000-8100", want: []PortRange{Port(25), Port(3306), {First: 8000, Last: 8100}}},
		{in: "7-7", want: []PortRange{Port(7)}},
		{in: "0", wantErr: `"0" is not a port`},
		{in: "65536", wantErr: `"65536" is not a port`},
		{in: "-1", wantErr: `"" is not a port`},
		{in: "http", wantErr: `"http" is not a port`},
		{in: "80 443", wantErr: `"80 443" is not a port`},
		{in: "8100-8000", wantErr: "reversed"},
		{in: "80-", wantErr: `"" is not a port`},
		{in: "1-2-3", wantErr: `"2-3" is not a port`},
		{in: "80,0-10", wantErr: `"0-10"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePortRanges(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		in      string
		want    []netip.Prefix
		wantErr string
	}{
		{in: "", want: nil},
		{in: "10.0.0.0/8", want: []netip.Prefix{p("10.0.0.0/8")}},
		{in: "10.0.0.0/8, fd00:231::/64", want: []netip.Prefix{p("10.0.0.0/8"), p("fd00:231::/64")}},
		{in: "1.2.3.4", want: []netip.Prefix{p("1.2.3.4/32")}},
		{in: "::1", want: []netip.Prefix{p("::1/128")}},
		{in: "0.0.0.0/0,::/0", want: []netip.Prefix{p("0.0.0.0/0"), p("::/0")}},
		{in: "10.1.2.3/24", want: []netip.Prefix{p("10.1.2.3/24")}}, // Plan clears the host bits
		{in: "10.0.0.0/33", wantErr: `"10.0.0.0/33" is not a CIDR`},
		{in: "fd00::/129", wantErr: `"fd00::/129" is not a CIDR`},
		{in: "10.0.0/8", wantErr: "is not a CIDR"},
		{in: "example.com", wantErr: `"example.com" is not an IP address or CIDR`},
		{in: "fe80::1%eth0", wantErr: "is not an IP address"},
		{in: "10.0.0.0/8/9", wantErr: "is not a CIDR"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePrefixes(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	many := make([]PortRange, MaxListEntries+1)
	for i := range many {
		many[i] = Port(uint16(i + 1))
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string // substrings of the error; none means valid
	}{
		{name: "default", change: func(*Config) {}},
		{name: "everything set", change: func(c *Config) {
			c.SkipInboundPorts = []PortRange{Port(9000), {First: 1, Last: 65535}}
			c.SkipOutboundPorts = []PortRange{Port(5432)}
			c.IgnoredCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
		}},
		{name: "no outbound port", change: func(c *Config) { c.OutboundPort = 0 }, want: []string{"outbound port must be between"}},
		{name: "no inbound port", change: func(c *Config) { c.InboundPort = 0 }, want: []string{"inbound port must be between"}},
		{name: "same ports", change: func(c *Config) { c.InboundPort = c.OutboundPort }, want: []string{"must differ (both are 4140)"}},
		{name: "root proxy", change: func(c *Config) { c.ProxyUID = 0 }, want: []string{"proxy UID must not be 0"}},
		{name: "no user", change: func(c *Config) { c.ProxyUID = 1<<32 - 1 }, want: []string{"proxy UID 4294967295 is not a user"}},
		{name: "proxy port 0", change: func(c *Config) { c.ProxyPorts = []uint16{4191, 0} }, want: []string{"proxy ports must be"}},
		{name: "reversed range", change: func(c *Config) { c.SkipOutboundPorts = []PortRange{{First: 90, Last: 80}} },
			want: []string{"skipped outbound ports: 90-80: the range is reversed"}},
		{name: "port 0 in a range", change: func(c *Config) { c.SkipInboundPorts = []PortRange{{First: 0, Last: 80}} },
			want: []string{"skipped inbound ports: 0-80: ports must be"}},
		{name: "invalid prefix", change: func(c *Config) { c.IgnoredCIDRs = []netip.Prefix{{}} }, want: []string{"invalid prefix"}},
		{name: "IPv4-mapped prefix", change: func(c *Config) {
			c.IgnoredCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
		}, want: []string{"use the IPv4 form"}},
		{name: "too many entries", change: func(c *Config) { c.SkipOutboundPorts = many },
			want: []string{"skipped outbound ports: 257 entries, at most 256"}},
		{name: "every problem at once", change: func(c *Config) { c.OutboundPort, c.ProxyUID = 0, 0 },
			want: []string{"outbound port", "proxy UID"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.change(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestPortRangeString(t *testing.T) {
	for _, tc := range []struct {
		r    PortRange
		want string
	}{
		{Port(80), "80"},
		{PortRange{First: 8000, Last: 8100}, "8000-8100"},
		{PortRange{First: 1, Last: 65535}, "1-65535"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%#v: got %q, want %q", tc.r, got, tc.want)
		}
	}
}
