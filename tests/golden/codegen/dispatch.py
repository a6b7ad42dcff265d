# edgerules policy f099c198ae8b: generated code, do not edit.
# Runtime helpers: _Decision, _finish, _estimate_tokens, _count_messages, _parse_metadata, _gmtime, _tool_names, _forces_tool, _response_format, _body_path, _body_typed; constants _K*, patterns _R*, dispatch _D*.

def _b1_0(d, m, model, stream, temperature):
    # dispatch.rules:4: rule alias_a
    m.append('alias_a')
    d.route = _K0
    d.rule = 'alias_a'
    return True

def _b1_1(d, m, model, stream, temperature):
    # dispatch.rules:5: rule alias_bc
    m.append('alias_bc')
    d.tags += ('bc',)
    return False

def _b1_2(d, m, model, stream, temperature):
    # dispatch.rules:5: rule alias_bc
    m.append('alias_bc')
    d.tags += ('bc',)
    # dispatch.rules:6: rule alias_c
    if stream:
        m.append('alias_c')
        d.route = _K1
        d.rule = 'alias_c'
        return True
    # dispatch.rules:7: rule alias_c2
    m.append('alias_c2')
    d.route = _K2
    d.rule = 'alias_c2'
    return True

def _b1_3(d, m, model, stream, temperature):
    # dispatch.rules:9: rule alias_d
    m.append('alias_d')
    d.tags += ('de',)
    return False

def _b1_4(d, m, model, stream, temperature):
    # dispatch.rules:9: rule alias_d
    m.append('alias_d')
    d.tags += ('de',)
    # dispatch.rules:10: rule alias_e
    m.append('alias_e')
    d.route = _K3
    d.rule = 'alias_e'
    return True

def _b1_5(d, m, model, stream, temperature):
    # dispatch.rules:11: rule alias_f
    m.append('alias_f')
    d.route = _K4
    d.rule = 'alias_f'
    return True

_D1 = {
    'a': _b1_0,
    'b': _b1_1,
    'c': _b1_2,
    'd': _b1_3,
    'e': _b1_4,
    'f': _b1_5,
}

def _b2_0(d, m, hour):
    # dispatch.rules:17: rule at_night
    m.append('at_night')
    d.tags += ('night',)
    return False

def _b2_1(d, m, hour):
    # dispatch.rules:18: rule at_noon
    m.append('at_noon')
    d.tags += ('noon',)
    return False

def _b2_2(d, m, hour):
    # dispatch.rules:19: rule at_one
    m.append('at_one')
    d.tags += ('one',)
    return False

def _b2_3(d, m, hour):
    # dispatch.rules:20: rule at_two
    m.append('at_two')
    d.tags += ('two',)
    return False

def _b2_4(d, m, hour):
    # dispatch.rules:21: rule at_three
    m.append('at_three')
    d.tags += ('three',)
    return False

def _b2_5(d, m, hour):
    # dispatch.rules:22: rule at_four
    m.append('at_four')
    d.tags += ('four',)
    return False

def _b2_6(d, m, hour):
    # dispatch.rules:23: rule at_five
    m.append('at_five')
    d.tags += ('five',)
    return False

def _b2_7(d, m, hour):
    # dispatch.rules:24: rule at_six
    m.append('at_six')
    d.route = _K5
    d.rule = 'at_six'
    return True

_D2 = {
    0: _b2_0,
    1: _b2_0,
    2: _b2_0,
    3: _b2_0,
    12: _b2_1,
    13: _b2_2,
    14: _b2_3,
    15: _b2_4,
    16: _b2_5,
    17: _b2_6,
    18: _b2_7,
}

def decide(body, headers, key, path, method, ip, now):
    d = _Decision()
    m = d.matched = []
    model = body.get("model") or ""
    stream = body.get("stream") is True
    temperature = body.get("temperature")
    # dispatch.rules:4-11: rules 'alias_a' to 'alias_f' dispatched on one field
    b = _D1.get(model)
    if b is not None and b(d, m, model, stream, temperature):
        return d
    h_x_plan = headers.get('x-plan', "")
    # dispatch.rules:13: rule plan_free
    if h_x_plan == 'free':
        m.append('plan_free')
        d.tags += ('free',)
    # dispatch.rules:14: rule plan_pro
    if h_x_plan == 'pro':
        m.append('plan_pro')
        d.tags += ('pro',)
    # dispatch.rules:15: rule plan_team
    if h_x_plan in {'team'}:
        m.append('plan_team')
        d.tags += ('team',)
    _utc = _gmtime(now)
    hour = _utc.tm_hour
    # dispatch.rules:17-24: rules 'at_night' to 'at_six' dispatched on one field
    b = _D2.get(hour)
    if b is not None and b(d, m, hour):
        return d
    return _finish(d, body.get("model") or "")
