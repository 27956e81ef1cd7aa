package plugin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLimit: past the bound, a request waits for a slot and then gets a
// 503 with an error the engine can show, instead of hanging.
func TestLimit(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(1)
	h := Limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Done()
		<-release // a request stuck in a kernel call
	}), 1, 50*time.Millisecond, nil, nil)
	go h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	started.Wait()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/NetworkDriver.Join", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"Err"`) {
		t.Fatalf("second request: %d %s", rec.Code, rec.Body)
	}
	close(release)
}

// TestLimitWaitKeepsTheBody: a request that waited for its slot longer
// than the server's read timeout can still send its body, instead of
// being refused as undecodable.
func TestLimitWaitKeepsTheBody(t *testing.T) {
	release := make(chan struct{})
	h := Limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hold") != "" {
			<-release
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Write(b)
	}), 1, 5*time.Second, nil, nil)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()

	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", srv.URL+"/NetworkDriver.Join", strings.NewReader("{}"))
		req.Header.Set("X-Hold", "1")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	time.Sleep(50 * time.Millisecond) // the first request holds the slot
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers now, the body after the server's read timeout, while the
	// request waits for its slot; the slot comes free after that.
	fmt.Fprintf(conn, "POST /NetworkDriver.Join HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n")
	time.Sleep(300 * time.Millisecond)
	io.WriteString(conn, `{"a":1}`)
	time.Sleep(100 * time.Millisecond)
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != `{"a":1}` {
		t.Fatalf("request that waited for its slot: %d %q", resp.StatusCode, body)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
