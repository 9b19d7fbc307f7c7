-- iketcp.lua: RFC 9329 (TCP Encapsulation of IKE and IPsec Packets) for Wireshark/tshark 4.0.
--
-- Install: copy to ~/.local/lib/wireshark/plugins/ or pass `-X lua_script:iketcp.lua`.
-- Wireshark's own `tcpencap` is Cisco's older format (a trailer, no Length framing) and
-- misreads these streams; this dissector owns TCP port 4500 (or the port set in its
-- preferences) and hands IKE messages to `isakmp` and ESP packets to `esp`, so both decrypt
-- with the ikev2_decryption_table and esp_sa tables of a key log. See README.md beside it.

local iketcp = Proto("iketcp", "TCP Encapsulation of IKE and IPsec (RFC 9329)")

local PREFIX = "IKETCP" -- RFC 9329 §4
local DEFAULT_PORT = 4500 -- RFC 9329 §2

-- Frame kinds, shown as iketcp.kind.
local KIND_IKE, KIND_ESP, KIND_KEEPALIVE, KIND_EMPTY, KIND_BAD = 1, 2, 3, 4, 5
local kind_names = {
    [KIND_IKE] = "IKE",
    [KIND_ESP] = "ESP",
    [KIND_KEEPALIVE] = "NAT-keepalive",
    [KIND_EMPTY] = "Empty",
    [KIND_BAD] = "Malformed",
}

local f = {
    prefix = ProtoField.string("iketcp.prefix", "Stream prefix"),
    frame = ProtoField.none("iketcp.frame", "Frame"),
    length = ProtoField.uint16("iketcp.length", "Length", base.DEC, nil, nil,
        "Octets in the frame, this field included (RFC 9329 §3)"),
    kind = ProtoField.uint8("iketcp.kind", "Kind", base.DEC, kind_names),
    marker = ProtoField.uint32("iketcp.non_esp_marker", "Non-ESP marker", base.HEX),
    keepalive = ProtoField.uint8("iketcp.keepalive", "NAT-keepalive", base.HEX),
    body = ProtoField.bytes("iketcp.body", "Body"),
}
iketcp.fields = f

local e = {
    fatal_length = ProtoExpert.new("iketcp.length.fatal",
        "Length 0 or 1: a fatal error, the receiver closes the connection (RFC 9329 §3.1, §3.2)",
        expert.group.MALFORMED, expert.severity.ERROR),
    short_body = ProtoExpert.new("iketcp.body.short",
        "Body too short for an IKE message or an ESP packet (RFC 9329 §3)",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_keepalive = ProtoExpert.new("iketcp.keepalive.bad",
        "1-octet frame that is not a NAT-keepalive (0xFF, RFC 9329 §6.6)",
        expert.group.MALFORMED, expert.severity.ERROR),
    keepalive = ProtoExpert.new("iketcp.keepalive.seen",
        "NAT-keepalive: SHOULD NOT be sent over TCP, dropped by the receiver (RFC 9329 §6.6)",
        expert.group.PROTOCOL, expert.severity.NOTE),
    empty = ProtoExpert.new("iketcp.empty",
        "Empty frame, ignored by the receiver (RFC 9329 §3)",
        expert.group.PROTOCOL, expert.severity.NOTE),
    sub_error = ProtoExpert.new("iketcp.subdissector_error",
        "The IKE or ESP dissector failed on this frame",
        expert.group.MALFORMED, expert.severity.ERROR),
    lost = ProtoExpert.new("iketcp.framing_lost",
        "Framing lost after a fatal Length: the rest of the segment is not dissected",
        expert.group.MALFORMED, expert.severity.ERROR),
}
iketcp.experts = e

iketcp.prefs.port = Pref.uint("TCP port", DEFAULT_PORT,
    "TCP port of the TCP Responder (RFC 9329 §2: 4500, or a configured alternate port)")

local tcp_seq = Field.new("tcp.seq")
local tcp_stream = Field.new("tcp.stream")

-- TCP streams whose first segment held only part of the prefix (RFC 9329 §4), so the
-- reassembled rest arrives in a later frame, whose sequence number is no longer 1.
local split_prefix = {}

function iketcp.init()
    split_prefix = {}
end

local isakmp = Dissector.get("isakmp")
local esp = Dissector.get("esp")

-- The TCP stream number, or nil.
local function stream_id()
    local s = tcp_stream()
    return s and s.value
end

-- True if this tvb starts the TCP Originator's stream: relative sequence number 1 (Wireshark's
-- default) in the direction towards the Responder's port (RFC 9329 §4: sent once, by the
-- Originator only), or the reassembly of a prefix that was split.
local function at_originator_start(pinfo)
    local port = pinfo.match_uint
    if pinfo.dst_port ~= port and pinfo.src_port == port then
        return false
    end
    local seq = tcp_seq()
    if seq ~= nil and seq.value == 1 then
        return true
    end
    local id = stream_id()
    return id ~= nil and split_prefix[id] == true
end

-- Calls a subdissector with the outer addresses restored afterwards: `esp` looks its SA up by
-- pinfo's addresses, and a decrypted inner IP packet overwrites them for the next frame. An
-- exception in it (already shown as malformed in its tree) is noted on the frame `ft` and
-- does not stop the frames after it.
local function call_keeping_addresses(d, tvb, pinfo, tree, ft)
    local src, dst, nsrc, ndst = pinfo.src, pinfo.dst, pinfo.net_src, pinfo.net_dst
    local ok, err = pcall(Dissector.call, d, tvb, pinfo, tree)
    pinfo.src, pinfo.dst, pinfo.net_src, pinfo.net_dst = src, dst, nsrc, ndst
    if not ok then
        ft:add_proto_expert_info(e.sub_error, "Dissector failed: " .. tostring(err))
    end
end

-- Dissects one frame of `len` octets at `off` into `tree` (IKE and ESP go under `root`, as
-- over UDP); returns its kind.
local function dissect_frame(tvb, pinfo, root, tree, off, len)
    local ft = tree:add(f.frame, tvb(off, len))
    ft:add(f.length, tvb(off, 2))
    local body_len = len - 2
    local kind
    if body_len == 0 then
        kind = KIND_EMPTY -- RFC 9329 §3: ignored by the receiver
        ft:add_proto_expert_info(e.empty)
    elseif body_len == 1 then
        local ka = ft:add(f.keepalive, tvb(off + 2, 1))
        if tvb(off + 2, 1):uint() == 0xFF then
            kind = KIND_KEEPALIVE -- RFC 9329 §6.6
            ka:add_proto_expert_info(e.keepalive)
        else
            kind = KIND_BAD
            ka:add_proto_expert_info(e.bad_keepalive)
        end
    elseif body_len < 4 then
        kind = KIND_BAD
        ft:add(f.body, tvb(off + 2, body_len)):add_proto_expert_info(e.short_body)
    elseif tvb(off + 2, 4):uint() == 0 then
        -- RFC 9329 §3.1: a zero Non-ESP marker, then the IKE message (header: 28 octets).
        kind = KIND_IKE
        ft:add(f.marker, tvb(off + 2, 4))
        if body_len < 4 + 28 then
            ft:add_proto_expert_info(e.short_body)
        else
            call_keeping_addresses(isakmp, tvb(off + 6, body_len - 4):tvb(), pinfo, root, ft)
        end
    else
        -- RFC 9329 §3.2: the ESP packet itself (SPI and Sequence Number at least).
        kind = KIND_ESP
        if body_len < 8 then
            ft:add(f.body, tvb(off + 2, body_len)):add_proto_expert_info(e.short_body)
        else
            call_keeping_addresses(esp, tvb(off + 2, body_len):tvb(), pinfo, root, ft)
        end
    end
    ft:add(f.kind, tvb(off, 2), kind):set_generated()
    ft:append_text(string.format(": %s, Length %d", kind_names[kind], len))
    return kind
end

function iketcp.dissector(tvb, pinfo, root)
    local total = tvb:len()
    if total == 0 then
        return 0
    end
    pinfo.cols.protocol = "IKETCP"
    local tree = root:add(iketcp, tvb())
    local off = 0
    local kinds = {}

    if at_originator_start(pinfo) then
        local n = math.min(total, #PREFIX)
        if tvb(0, n):string() == PREFIX:sub(1, n) then
            if n < #PREFIX then
                -- The prefix split over segments: wait for the rest (RFC 9329 §4).
                local id = stream_id()
                if id ~= nil then
                    split_prefix[id] = true
                end
                pinfo.desegment_offset = 0
                pinfo.desegment_len = #PREFIX - n
                return total
            end
            tree:add(f.prefix, tvb(0, #PREFIX))
            kinds[#kinds + 1] = "Prefix"
            off = #PREFIX
        end
    end

    -- RFC 9329 §3: each frame is a 2-octet Length (counting itself) and a body.
    while off < total do
        if total - off < 2 then
            pinfo.desegment_offset = off
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            break
        end
        local len = tvb(off, 2):uint()
        if len < 2 then
            -- RFC 9329 §3.1, §3.2: fatal, nothing after it can be framed.
            local ft = tree:add(f.frame, tvb(off, total - off))
            ft:add(f.length, tvb(off, 2)):add_proto_expert_info(e.fatal_length)
            ft:add(f.kind, tvb(off, 2), KIND_BAD):set_generated()
            ft:add_proto_expert_info(e.lost)
            ft:append_text(string.format(": Malformed, Length %d", len))
            kinds[#kinds + 1] = "Malformed"
            off = total
            break
        end
        if total - off < len then
            pinfo.desegment_offset = off
            pinfo.desegment_len = len - (total - off)
            break
        end
        kinds[#kinds + 1] = kind_names[dissect_frame(tvb, pinfo, root, tree, off, len)]
        off = off + len
    end
    if off > 0 then
        tree:set_len(off)
    end
    tree:append_text(", " .. (#kinds > 0 and table.concat(kinds, ", ") or "continuation"))
    return total
end

local registered_port = nil

-- Moves the tcp.port registration to the preference's port (any port; 0 registers none).
local function register_port(port)
    local t = DissectorTable.get("tcp.port")
    if registered_port ~= nil and registered_port ~= 0 then
        t:remove(registered_port, iketcp)
    end
    if port ~= 0 then
        t:add(port, iketcp)
    end
    registered_port = port
end

function iketcp.prefs_changed()
    if iketcp.prefs.port ~= registered_port then
        register_port(iketcp.prefs.port)
    end
end

register_port(DEFAULT_PORT)
DissectorTable.get("tcp.port"):add_for_decode_as(iketcp)
