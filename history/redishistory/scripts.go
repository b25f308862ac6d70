package redishistory

import goredis "github.com/redis/go-redis/v9"

// The scripts run atomically in Redis, so a channel's epoch, head and
// stream change together, whichever node calls them. Each touches only
// the keys it is passed, all of one channel and so of one hash slot.
//
// Every script starts with openChannel: it reads the channel's epoch and
// head from its meta hash or, when the hash is missing (a new channel, or
// one whose keys Redis lost, evicted or expired), starts the epoch the
// caller proposed at head 0. It deletes the stream then: entries left
// from a lost epoch must not be read as the new one's.
//
// Offsets pass through Lua numbers (doubles): exact up to 2^53, which no
// channel reaches. string.format('%d') keeps large ones out of exponent
// notation.
const openChannel = `
local function openChannel(meta, stream, epoch, expiry)
  local m = redis.call('HMGET', meta, 'epoch', 'head')
  if m[1] then
    return m[1], tonumber(m[2])
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
  redis.call('PEXPIRE', meta, expiry)
  return epoch, 0
end
`

// headScript returns the channel's {epoch, head}.
//
//	KEYS: meta, stream
//	ARGV: proposed epoch, expiry of a new meta hash (ms)
var headScript = goredis.NewScript(openChannel + `
local epoch, head = openChannel(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return {epoch, head}
`)

// sinceScript is Since's path for the cases its MULTI/EXEC read does not
// serve: a channel without an epoch, a position from another epoch or past
// the head. It returns {epoch, head} and, unless the reader is at the head
// or nothing is retained, the stream entries a reader at the position
// needs, oldest first: from the one after the position, or — for a position outside
// the epoch's offsets — from the oldest of the last size offsets. The
// caller decides about gaps and applies the TTL.
//
//	KEYS: meta, stream
//	ARGV: proposed epoch, expiry of a new meta hash (ms),
//	      position's epoch, position's offset, size
var sinceScript = goredis.NewScript(openChannel + `
local epoch, head = openChannel(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local size = tonumber(ARGV[5])
if head == 0 or size <= 0 then
  return {epoch, head}
end
local from = head - size + 1
if from < 1 then
  from = 1
end
if ARGV[3] == epoch then
  local p = tonumber(ARGV[4])
  if p == head then
    return {epoch, head}
  end
  if p < head and p >= from then
    from = p + 1
  end
end
return {epoch, head, redis.call('XRANGE', KEYS[2], string.format('%d-0', from), '+')}
`)

// appendScript stores a message at the channel's next offset, or finds
// the one stored before under the same idempotency key.
//
// Stored: increments the head, adds the entry "<offset>-0" to the stream
// trimmed to maxlen entries (with maxlen 0 the stream is dropped: the
// namespace keeps nothing), refreshes the expiry of both keys, records
// the key for the duplicate window, and returns {0, epoch, offset}.
//
// Duplicate: returns {1, epoch, offset, {field, value…}} when the stored
// message is in the current epoch and still in the stream, else
// {1, epoch, 0}.
//
//	KEYS: meta, stream[, idempotency key]
//	ARGV: proposed epoch, expiry of both keys (ms), maxlen,
//	      type, data, time (Unix ns)[, duplicate window (ms)]
var appendScript = goredis.NewScript(openChannel + `
local epoch = openChannel(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if KEYS[3] then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    if not sp then
      return {1, prev, 0}
    end
    local pe, po = string.sub(prev, 1, sp - 1), string.sub(prev, sp + 1)
    if pe == epoch then
      local e = redis.call('XRANGE', KEYS[2], po .. '-0', po .. '-0')
      if e[1] then
        return {1, pe, tonumber(po), e[1][2]}
      end
    end
    return {1, pe, 0}
  end
end
local off = redis.call('HINCRBY', KEYS[1], 'head', 1)
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, string.format('%d-0', off),
    't', ARGV[4], 'd', ARGV[5], 'ns', ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if KEYS[3] then
  redis.call('SET', KEYS[3], epoch .. ' ' .. string.format('%d', off), 'PX', ARGV[7])
end
return {0, epoch, off}
`)

// scripts are loaded by New, so that a missing Redis or one without
// scripting fails there rather than at the first publish.
var scripts = []*goredis.Script{headScript, sinceScript, appendScript}
