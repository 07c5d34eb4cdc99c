package percpu_test

import (
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/opcontrol/opcontrol/internal/percpu"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIndexInRange(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan int, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10000 {
				if i := percpu.Index(); i < 0 || i >= percpu.Stripes {
					errs <- i
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for i := range errs {
		t.Fatalf("Index() = %d, outside [0, %d)", i, percpu.Stripes)
	}
}

// One goroutine, with no garbage collection in between, keeps its P's
// token: the stripe is stable. (Under the race detector sync.Pool drops
// tokens at random, which this tolerates by counting distinct values.)
func TestIndexStableOnOneP(t *testing.T) {
	seen := map[int]bool{}
	for range 1000 {
		seen[percpu.Index()] = true
	}
	if len(seen) > percpu.Stripes/2 && !raceEnabled {
		t.Fatalf("1,000 calls on one goroutine used %d stripes; want the P's one", len(seen))
	}
}

func BenchmarkIndex(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = percpu.Index()
		}
	})
}
