# Runs a Logstash ruby filter script (logstash/*.rb) outside Logstash, for tests/es/test_logstash.py:
# the subset of the Event API such scripts use (get, set, tag; "[a][b]" field references), the
# script's own `test` blocks (as Logstash runs them at pipeline start), then one JSON event per
# line of stdin through `filter`, each printed back as JSON.
#
#   ruby tests/es/logstash_ruby.rb logstash/packet_version.rb < events.ndjson
require "json"

class Event
  def initialize(fields)
    @fields = fields
  end

  def self.path(reference)
    reference.start_with?("[") ? reference.scan(/\[([^\]]+)\]/).flatten : [reference]
  end

  def get(reference)
    Event.path(reference).reduce(@fields) { |node, part| node.is_a?(Hash) ? node[part] : nil }
  end

  def set(reference, value)
    *parents, last = Event.path(reference)
    node = parents.reduce(@fields) { |inner, part| inner[part] ||= {} }
    node[last] = value
  end

  def tag(name)
    (@fields["tags"] ||= []) << name
  end

  def to_hash
    @fields
  end
end

TESTS = []

def test(name, &block)
  TESTS << [name, block]
end

class ScriptTest
  def initialize(name)
    @name = name
    @parameters = {}
    @expectations = []
  end

  def parameters(&block)
    @parameters = block.call
  end

  def in_event(&block)
    @event = block.call
  end

  def expect(what, &block)
    @expectations << [what, block]
  end

  def run
    register(@parameters)
    events = filter(Event.new(@event))
    @expectations.each do |what, check|
      raise "script test #{@name.inspect} failed: #{what}" unless check.call(events)
    end
  end
end

load ARGV.fetch(0)
TESTS.each do |name, block|
  test_case = ScriptTest.new(name)
  test_case.instance_eval(&block)
  test_case.run
end
STDERR.puts "#{TESTS.size} script tests passed"
register({})
STDIN.each_line do |line|
  puts JSON.generate(filter(Event.new(JSON.parse(line))).map(&:to_hash))
end
