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
local most, now, taken, count = tonumber(ARGV[1]), ARGV[2], {}, 0
for k = 3, #KEYS do
  while count < most do
    local item = redis.call('RPOP', KEYS[k])
    if not item then break end
    local ok, message = pcall(cjson.decode, item)
    if not ok or type(message) ~= 'table' or type(message['properties']) ~= 'table' then
      -- Not a message this script can read: back to the tail, for BRPOP and kombu's
      -- own handling of it.
      redis.call('RPUSH', KEYS[k], item)
      return taken
    end
    local properties = message['properties']
    local info = properties['delivery_info']
    local tag = properties['delivery_tag']
    if type(tag) ~= 'string' or type(info) ~= 'table' then
      -- Recording it would fail halfway, after the RPOP: leave it to BRPOP and kombu.
      redis.call('RPUSH', KEYS[k], item)
      return taken
    end
    redis.call('ZADD', KEYS[1], now, tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ', ' .. cjson.encode(info['exchange'])
      .. ', ' .. cjson.encode(info['routing_key']) .. ']')
    taken[#taken + 1] = KEYS[k]
    taken[#taken + 1] = item
    count = count + 1
  end
end
return taken
