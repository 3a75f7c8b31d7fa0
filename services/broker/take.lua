-- Takes as many messages as a worker has room for, in one round trip, and records each
-- as unacknowledged as kombu's QoS.append would — but atomically (kombu pops, then
-- records, and loses a message to a crash in between). First it deletes the tags of
-- messages acknowledged meanwhile (services/broker/qos.py), which would otherwise wait
-- for a round trip of their own.
--
-- KEYS[1]      the unacked index: sorted set of delivery tag -> when it was taken
-- KEYS[2]      the unacked hash: delivery tag -> [message, exchange, routing key]
-- KEYS[3..]    the queue lists, in the order BRPOP reads them
-- ARGV[1]      at most this many messages
-- ARGV[2]      the time now (seconds since the epoch), the score of each taken tag
-- ARGV[3]      how many acknowledged tags follow
-- ARGV[4..]    the acknowledged tags, to delete from KEYS[1] and KEYS[2]
--
-- Returns {list key, message, list key, message, ...} of what it took.

local acked = tonumber(ARGV[3])
if acked > 0 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 4, 3 + acked))
  redis.call('HDEL', KEYS[2], unpack(ARGV, 4, 3 + acked))
end
local most, now, taken = tonumber(ARGV[1]), ARGV[2], {}
-- Every message taken is recorded by one ZADD and one HSET at the end, and each list is
-- emptied by one RPOP of many (Redis 6.2): a take of n messages costs 4 commands, not
-- 3n + 1 (an RPOP, a ZADD and an HSET each, and the RPOP that found the list empty).
local scores, entries = {}, {}
local function recorded()
  if #scores > 0 then
    redis.call('ZADD', KEYS[1], unpack(scores))
    redis.call('HSET', KEYS[2], unpack(entries))
  end
  return taken
end
for k = 3, #KEYS do
  local room = most - #taken / 2
  if room <= 0 then break end
  local items = redis.call('RPOP', KEYS[k], room)
  for i, item in ipairs(items or {}) do
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local info = type(properties) == 'table' and properties['delivery_info']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(tag) ~= 'string' or type(info) ~= 'table' then
      -- Not a message this script can read (or recording it would fail halfway): it
      -- and those popped after it go back to the tail as they were, for BRPOP and
      -- kombu's own handling of it.
      for j = #items, i, -1 do redis.call('RPUSH', KEYS[k], items[j]) end
      return recorded()
    end
    scores[#scores + 1] = now
    scores[#scores + 1] = tag
    entries[#entries + 1] = tag
    entries[#entries + 1] = '[' .. item .. ', ' .. cjson.encode(info['exchange'])
      .. ', ' .. cjson.encode(info['routing_key']) .. ']'
    taken[#taken + 1] = KEYS[k]
    taken[#taken + 1] = item
  end
end
return recorded()
