# The packet's time as an external version for Elasticsearch, in epoch microseconds: the scale
# latest-server uses on every path (LATEST_BACKEND=elasticsearch writes the same versions, so
# this pipeline and latest-server can fill one index). Used by rabbitmq-to-elasticsearch.conf:
#
#   ruby {
#     path => "/usr/share/logstash/pipelines/packet_version.rb"
#     script_params => { "fields" => ["observationDateTime", "timestamp", "ts"] }
#   }
#
# The rule is latest-server's (LATEST_TIME_FIELD, LATEST_TIME_UNIT=auto): the first of `fields`
# that the packet has is its time; an ISO-8601 string with a UTC offset, or an epoch number (or
# a string holding one) in seconds, milliseconds, microseconds or nanoseconds, told apart by
# magnitude (< 1e11 s, < 1e14 ms, < 1e17 µs, else ns). The version is set as an Integer in
# `target` ([@metadata][version]); a packet whose time is missing or unusable gets no version
# and the tag _no_packet_time (the output then writes it without one, never a literal
# "%{[@metadata][version]}"). Logstash runs the tests at the end of this file when the pipeline
# starts, and refuses to start if one fails.

require "time"

def register(params)
  @fields = params["fields"] || ["observationDateTime", "timestamp", "ts"]
  @target = params["target"] || "[@metadata][version]"
end

def filter(event)
  field = @fields.find { |name| !event.get(name).nil? }
  version = field && packet_time_us(event.get(field))
  if version
    event.set(@target, version)
  else
    event.tag("_no_packet_time")
  end
  [event]
end

ISO_OFFSET = /(Z|[+-]\d\d(:?\d\d)?)\z/i
NUMBER = /\A-?\d+(\.\d+)?([eE][+-]?\d+)?\z/

def packet_time_us(value)
  case value
  when Integer, Float
    epoch_us(value)
  when String
    text = value.strip
    if text =~ NUMBER
      epoch_us(text =~ /\A-?\d+\z/ ? text.to_i : text.to_f)
    elsif text =~ ISO_OFFSET  # a time without an offset is refused, as latest-server does
      moment = Time.iso8601(text.sub(" ", "T"))
      (moment.to_r * 1_000_000).floor
    end
  end
rescue ArgumentError, RangeError, FloatDomainError
  nil
end

def epoch_us(number)
  return nil if number.is_a?(Float) && !number.finite?
  magnitude = number.abs
  factor = if magnitude < 1e11 then 1_000_000
           elsif magnitude < 1e14 then 1_000
           elsif magnitude < 1e17 then 1
           else 0.001
           end
  return number.div(1000) if factor == 0.001 && number.is_a?(Integer)
  return number * factor if number.is_a?(Integer) && factor.is_a?(Integer)
  (number * factor).round(half: :even)  # Python's round(), as latest-server computes it
end

test "an ISO-8601 observationDateTime" do
  in_event { { "observationDateTime" => "2024-05-01T10:00:00.123456+05:30" } }
  expect("is its time in µs") { |events| events.first.get("[@metadata][version]") == 1714537800123456 }
end

test "epoch seconds in ts" do
  in_event { { "ts" => 1714537800.25 } }
  expect("scaled to µs") { |events| events.first.get("[@metadata][version]") == 1714537800250000 }
end

test "epoch milliseconds in timestamp" do
  in_event { { "timestamp" => 1714537800123 } }
  expect("scaled to µs") { |events| events.first.get("[@metadata][version]") == 1714537800123000 }
end

test "no time field" do
  in_event { { "id" => "a" } }
  expect("no version, tagged") do |events|
    events.first.get("[@metadata][version]").nil? && events.first.get("tags").include?("_no_packet_time")
  end
end
