package main

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// promqlKeywords are PromQL's words that are not metric names: operators,
// modifiers, aggregations and the literals (case-insensitive, as in PromQL).
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"sum": true, "avg": true, "count": true, "min": true, "max": true, "group": true, "stddev": true,
	"stdvar": true, "topk": true, "bottomk": true, "count_values": true, "quantile": true,
	"limitk": true, "limit_ratio": true, "inf": true, "nan": true, "start": true, "end": true,
}

// promqlLabelLists are the keywords followed by a list of label names.
var promqlLabelLists = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
func isIdentChar(c byte) bool { return isIdentStart(c) || '0' <= c && c <= '9' }

// skipString returns the index after the string literal starting at i.
func skipString(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return len(s)
}

// promqlMetricNames returns the metric names expr selects, in order of
// first use. It lexes PromQL only as far as telling metric names from
// functions, keywords, label names, strings, numbers and durations; the
// grammar itself is promtool's to check (TestDashboard parses every
// expression with it), so this need not reject anything. A name given as
// {__name__="x"} counts; a regular expression on __name__ names nothing.
func promqlMetricNames(expr string) []string {
	var names []string
	add := func(n string) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	ident := func(i int) int {
		for i < len(expr) && isIdentChar(expr[i]) {
			i++
		}
		return i
	}
	space := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '#': // a comment, to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
		case c == '{': // label matchers
			for i++; i < len(expr) && expr[i] != '}'; {
				switch {
				case expr[i] == '"' || expr[i] == '\'' || expr[i] == '`':
					i = skipString(expr, i)
				case isIdentStart(expr[i]):
					j := ident(i)
					label := expr[i:j]
					if k := space(j); label == "__name__" && k+1 < len(expr) && expr[k] == '=' && expr[k+1] != '~' {
						if v := space(k + 1); v < len(expr) && strings.ContainsRune("\"'`", rune(expr[v])) {
							end := skipString(expr, v)
							if n, err := strconv.Unquote(expr[v:end]); err == nil {
								add(n)
							}
							j = end
						}
					}
					i = j
				default:
					i++
				}
			}
			i++
		case c == '[': // a range or subquery: durations only
			for i < len(expr) && expr[i] != ']' {
				i++
			}
			i++
		case '0' <= c && c <= '9' || c == '.': // a number or a duration
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := ident(i)
			word, k := expr[i:j], space(j)
			lower := strings.ToLower(word)
			switch {
			case promqlLabelLists[lower] && k < len(expr) && expr[k] == '(':
				if end := strings.IndexByte(expr[k:], ')'); end >= 0 {
					j = k + end + 1
				}
			case promqlKeywords[lower]:
			case k < len(expr) && expr[k] == '(': // a function
			default:
				add(word)
			}
			i = j
		default:
			i++
		}
	}
	return names
}

func TestPromQLMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`natsroute_members{pool=~"$pool"}`, []string{"natsroute_members"}},
		{`sum by (job, strategy) (rate(natsroute_requests_total{code=~"5.."}[5m]))`, []string{"natsroute_requests_total"}},
		{`sum(rate(a_total[5m])) by (instance) / on (instance) group_left (pool) b`, []string{"a_total", "b"}},
		{`histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval])))`, []string{"x_bucket"}},
		{`max_over_time(x[10m:1m]) offset 5m > bool 0.5 and y unless z or w`, []string{"x", "y", "z", "w"}},
		{`absent(up{job="natsroute"} == 1)`, []string{"up"}},
		{`{__name__="quoted_name", job="j"} + {__name__=~"ignored.*"}`, []string{"quoted_name"}},
		{`label_replace(m, "dst", "$1", "src", "(count|sum)") # a comment naming not_a_metric`, []string{"m"}},
		{`SUM BY (pool) (x) * 1e3 + Inf - NaN + 0x1f`, []string{"x"}},
		{`job:natsroute_requests:rate5m > 0.05`, []string{"job:natsroute_requests:rate5m"}},
		{`topk(3, count_values("v", x)) + quantile(0.5, y) + avg without (node) (z)`, []string{"x", "y", "z"}},
		{`x @ start() + y @ 1700000000`, []string{"x", "y"}},
	} {
		if got := promqlMetricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}
