// admitload POSTs AdmissionReviews to a webhook over HTTPS, a fixed number in flight on keep-alive
// connections, and prints one JSON object: latency percentiles, refusals and its own CPU time.
//
// A Python client sending 50 reviews in flight costs about as much CPU per request as the webhook
// itself, on the same cores: its figures would measure the client too. This one costs a fraction.
// Standard library only, so it builds without a module: go build -o admitload main.go
//
//	admitload -url https://HOST:PORT/inject -ca ca.crt -server-name NAME -reviews FILE -n 1000 -c 50 -warmup 100
//
// With -cpu-pid, the CPU time that process spent during the counted requests is reported too (the
// webhook's, read from /proc at the same instants the client's own is taken).
//
// FILE holds one AdmissionReview per line; each request takes the next line (cyclically) with
// every "__UID__" replaced by a fresh request uid, as an API server gives every call its own.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type answer struct {
	Response struct {
		Allowed bool            `json:"allowed"`
		Patch   string          `json:"patch"`
		Status  json.RawMessage `json:"status"`
	} `json:"response"`
}

type result struct {
	Admissions   int      `json:"admissions"`
	InFlight     int      `json:"in_flight"`
	P50Ms        float64  `json:"p50_ms"`
	P90Ms        float64  `json:"p90_ms"`
	P99Ms        float64  `json:"p99_ms"`
	MaxMs        float64  `json:"max_ms"`
	MeanMs       float64  `json:"mean_ms"`
	WallSeconds  float64  `json:"wall_seconds"`
	PerSecond    float64  `json:"per_second"`
	ClientCPUSec float64  `json:"client_cpu_seconds"`
	ServerCPUSec float64  `json:"server_cpu_seconds,omitempty"`
	Refused      []string `json:"refused"`
	RefusedCount int      `json:"refused_count"`
}

func main() {
	url := flag.String("url", "", "the webhook's URL, path included")
	caFile := flag.String("ca", "", "PEM file of the CA the webhook's certificate is checked against")
	serverName := flag.String("server-name", "", "the name the certificate must carry (default: the URL's host)")
	reviewsFile := flag.String("reviews", "", "AdmissionReviews, one per line")
	n := flag.Int("n", 1000, "counted requests")
	inFlight := flag.Int("c", 50, "requests in flight")
	warmup := flag.Int("warmup", 100, "requests sent first, not counted (connections, TLS sessions)")
	cpuPid := flag.Int("cpu-pid", 0, "also report this process's CPU time during the counted requests")
	flag.Parse()
	if *url == "" || *caFile == "" || *reviewsFile == "" || *n <= 0 || *inFlight <= 0 {
		fail("want -url, -ca, -reviews, and -n, -c above 0")
	}
	reviews := readLines(*reviewsFile)
	pem, err := os.ReadFile(*caFile)
	check(err, "-ca")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail(fmt.Sprintf("-ca %s: no PEM certificate in it", *caFile))
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool, ServerName: *serverName},
			MaxIdleConnsPerHost: *inFlight,
			MaxConnsPerHost:     *inFlight,
		},
	}
	if *warmup > 0 {
		send(client, *url, reviews, *warmup, *inFlight)
	}
	before, serverBefore := cpuSeconds(), processCPUSeconds(*cpuPid)
	start := time.Now()
	times, refused := send(client, *url, reviews, *n, *inFlight)
	wall := time.Since(start).Seconds()
	serverCPU := processCPUSeconds(*cpuPid) - serverBefore
	out := summarize(times, *inFlight)
	out.WallSeconds = round(wall, 3)
	out.PerSecond = round(float64(len(times))/wall, 1)
	out.ClientCPUSec = round(cpuSeconds()-before, 3)
	out.ServerCPUSec = round(serverCPU, 3)
	out.RefusedCount = len(refused)
	out.Refused = refused[:min(len(refused), 5)]
	check(json.NewEncoder(os.Stdout).Encode(out), "stdout")
}

// send makes count requests, inFlight at a time; latencies in seconds and refusals (trimmed).
func send(client *http.Client, url string, reviews [][]byte, count, inFlight int) ([]float64, []string) {
	times := make([]float64, count)
	var next atomic.Int64
	var mu sync.Mutex
	var refused []string
	var wg sync.WaitGroup
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				body := bytes.ReplaceAll(reviews[i%len(reviews)], []byte("__UID__"), []byte(uid(i)))
				begin := time.Now()
				why := post(client, url, body)
				times[i] = time.Since(begin).Seconds()
				if why != "" {
					mu.Lock()
					refused = append(refused, why)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return times, refused
}

// post sends one review; "" when it was allowed with a patch, else why not.
func post(client *http.Client, url string, body []byte) string {
	response, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		return err.Error()
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Sprintf("HTTP %d: %.200s", response.StatusCode, data)
	}
	var parsed answer
	if err := json.Unmarshal(data, &parsed); err != nil {
		return fmt.Sprintf("not JSON: %.200s", data)
	}
	if !parsed.Response.Allowed || parsed.Response.Patch == "" {
		return fmt.Sprintf("%.300s", parsed.Response.Status)
	}
	return ""
}

func summarize(times []float64, inFlight int) result {
	sorted := append([]float64(nil), times...)
	sort.Float64s(sorted)
	sum := 0.0
	for _, t := range sorted {
		sum += t
	}
	// Nearest rank, as bench/scale_operator.py's percentile().
	pct := func(p float64) float64 {
		rank := int(math.Ceil(p/100*float64(len(sorted)))) - 1
		return round(sorted[max(0, min(len(sorted)-1, rank))]*1000, 1)
	}
	return result{Admissions: len(sorted), InFlight: inFlight, P50Ms: pct(50), P90Ms: pct(90), P99Ms: pct(99),
		MaxMs: round(sorted[len(sorted)-1]*1000, 1), MeanMs: round(sum/float64(len(sorted))*1000, 1)}
}

func readLines(path string) [][]byte {
	file, err := os.Open(path)
	check(err, "-reviews")
	defer file.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		if line := bytes.TrimSpace(scanner.Bytes()); len(line) > 0 {
			lines = append(lines, append([]byte(nil), line...))
		}
	}
	check(scanner.Err(), "-reviews")
	if len(lines) == 0 {
		fail(fmt.Sprintf("-reviews %s: no AdmissionReview in it", path))
	}
	return lines
}

func uid(i int) string {
	return "00000000-0000-4000-8000-" + fmt.Sprintf("%012s", strconv.Itoa(i))
}

// cpuSeconds is this process's user and system CPU time so far.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	check(syscall.Getrusage(syscall.RUSAGE_SELF, &usage), "getrusage")
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

// processCPUSeconds is the user and system CPU time of process pid so far (0 for pid 0), from
// /proc/PID/stat in clock ticks: USER_HZ, 100 on Linux.
func processCPUSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err, "-cpu-pid")
	// Fields after the command name (which may hold spaces) in parentheses: utime and stime are the 12th and 13th.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, err := strconv.ParseFloat(fields[11], 64)
	check(err, "-cpu-pid utime")
	stime, err := strconv.ParseFloat(fields[12], 64)
	check(err, "-cpu-pid stime")
	return (utime + stime) / 100
}

func round(value float64, digits int) float64 {
	scale := math.Pow(10, float64(digits))
	return math.Round(value*scale) / scale
}

func check(err error, what string) {
	if err != nil {
		fail(fmt.Sprintf("%s: %v", what, err))
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "admitload:", message)
	os.Exit(2)
}
