-- One move (transition.lua, above this text): its answer, once what it shares is written.
local answer = transition(KEYS, ARGV)
flush()
return answer
