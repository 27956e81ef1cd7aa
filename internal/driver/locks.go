package driver

import "sync"

// keyedLocks are mutexes by key, which exist while someone holds or waits
// for them. Striping by hash made two unrelated endpoints wait for each
// other whenever their IDs collided, which at concurrency 64 was often.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	refs int // holders and waiters; under keyedLocks.mu
}

// lock locks key's mutex and returns its unlock.
func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() { k.release(key, l) }
}

// tryLock locks key's mutex if nobody holds or waits for it, and reports
// whether it did. The recheck holds many endpoints' locks at once with
// it: waiting for one while holding others could stop their calls behind
// a long publish.
func (k *keyedLocks) tryLock(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m[key] != nil {
		return nil, false
	}
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := &keyedLock{refs: 1}
	l.Lock()
	k.m[key] = l
	return func() { k.release(key, l) }, true
}

func (k *keyedLocks) release(key string, l *keyedLock) {
	l.Unlock()
	k.mu.Lock()
	if l.refs--; l.refs == 0 {
		delete(k.m, key)
	}
	k.mu.Unlock()
}
