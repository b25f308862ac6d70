package hub

import (
	"hash/maphash"
	"sync"
)

const indexShards = 128

// index maps channels to their local subscribers. It is split into shards
// by channel hash, each with its own lock, so that fan-out on one channel
// does not stall subscribes on others.
//
// Lock order: a shard's mu is taken before any Session.mu (fan-out holds
// the shard read lock while it calls Session.deliver). Nothing that holds a
// Session.mu takes a shard lock.
type index struct {
	seed   maphash.Seed
	shards [indexShards]indexShard
}

type indexShard struct {
	mu       sync.RWMutex
	channels map[string]*channelSubs // guarded by mu
}

// channelSubs is one channel's subscribers. Guarded by its shard's mu.
type channelSubs struct {
	subs []*Session
	pos  map[*Session]int // index of each session in subs
}

func newIndex() *index {
	x := &index{seed: maphash.MakeSeed()}
	for i := range x.shards {
		x.shards[i].channels = make(map[string]*channelSubs)
	}
	return x
}

func (x *index) shard(ch string) *indexShard {
	return &x.shards[maphash.String(x.seed, ch)%indexShards]
}

// add subscribes s to ch unless the channel already has max subscribers
// (max <= 0 means no limit). It reports false when the channel is full.
func (x *index) add(ch string, s *Session, max int) bool {
	sh := x.shard(ch)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	cs := sh.channels[ch]
	if cs == nil {
		cs = &channelSubs{pos: make(map[*Session]int)}
		sh.channels[ch] = cs
	}
	if _, ok := cs.pos[s]; ok {
		return true
	}
	if max > 0 && len(cs.subs) >= max {
		if len(cs.subs) == 0 {
			delete(sh.channels, ch)
		}
		return false
	}
	cs.pos[s] = len(cs.subs)
	cs.subs = append(cs.subs, s)
	return true
}

// remove unsubscribes s from ch. It reports whether s was subscribed.
func (x *index) remove(ch string, s *Session) bool {
	sh := x.shard(ch)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	cs := sh.channels[ch]
	if cs == nil {
		return false
	}
	i, ok := cs.pos[s]
	if !ok {
		return false
	}
	last := len(cs.subs) - 1
	cs.subs[i] = cs.subs[last]
	cs.pos[cs.subs[i]] = i
	cs.subs[last] = nil
	cs.subs = cs.subs[:last]
	delete(cs.pos, s)
	if len(cs.subs) == 0 {
		delete(sh.channels, ch)
	}
	return true
}

// fanout hands m to every subscriber of its channel and returns how many
// took it. It holds the shard's read lock, never blocks, and does no I/O.
func (x *index) fanout(m *Message) int {
	sh := x.shard(m.Channel)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	cs := sh.channels[m.Channel]
	if cs == nil {
		return 0
	}
	n := 0
	for _, s := range cs.subs {
		if s.deliver(m) {
			n++
		}
	}
	return n
}

// count returns the number of subscribers of ch.
func (x *index) count(ch string) int {
	sh := x.shard(ch)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if cs := sh.channels[ch]; cs != nil {
		return len(cs.subs)
	}
	return 0
}

// visit calls fn for every channel with subscribers, shard by shard, with
// that shard's read lock held; fn must not call back into the index.
func (x *index) visit(fn func(ch string, subscribers int)) {
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.RLock()
		for ch, cs := range sh.channels {
			fn(ch, len(cs.subs))
		}
		sh.mu.RUnlock()
	}
}
