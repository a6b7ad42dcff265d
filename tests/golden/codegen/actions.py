# edgerules policy a59ebc7667e3: generated code, do not edit.
# Runtime helpers: _Decision, _finish, _estimate_tokens, _count_messages, _parse_metadata, _gmtime, _tool_names, _forces_tool, _response_format, _body_path, _body_typed; constants _K*, patterns _R*, dispatch _D*.

def decide(body, headers, key, path, method, ip, now):
    d = _Decision()
    m = d.matched = []
    h_x_client = headers.get('x-client', "")
    input_tokens = _estimate_tokens(body)
    stream = body.get("stream") is True
    # actions.rules:5: rule guard
    if (input_tokens > 32000) or ((h_x_client == 'batch') and stream):
        m.append('guard')
        d.deny = (413, 'prompt is larger than 32k tokens')
        d.rule = 'guard'
        return d
    _utc = _gmtime(now)
    hour = _utc.tm_hour
    _meta = _parse_metadata(headers.get('x-edgerules-metadata'))
    md_team = _meta.get('team', "")
    md_tier = _meta.get('tier', "")
    user = body.get("user") or ""
    weekday = _utc.tm_wday
    # actions.rules:10: rule tiers
    if (md_tier in {'free', 'trial'}) and (not ((hour >= 8) and (hour < 18))) and (weekday != 6):
        m.append('tiers')
        d.limits += ((_K0, (key, user,)),)
        d.limits += ((_K1, (key,)),)
        d.limits += ((_K2, (md_team,)),)
        d.tags += ('free',)
        d.log = 'full'
    h_x_tenant = headers.get('x-tenant', "")
    max_tokens = body.get("max_tokens")
    model = body.get("model") or ""
    temperature = body.get("temperature")
    # actions.rules:19: rule settings
    if (temperature == 0) and (max_tokens is not None and max_tokens != 100) and (temperature is not None and temperature not in {0.5}):
        m.append('settings')
        d.cache = _K3
        d.cache_by = (model, h_x_tenant,)
        d.retry = _K4
        d.timeout = 20.0
        d.deadline = 60.0
    # actions.rules:27: rule patterns
    if (_R5(model)) and ('bot' in user) and (path.startswith('/v1/')) and (ip.endswith('.1')):
        m.append('patterns')
        d.cache = _K6
        d.cache_by = ()
        d.route = _K7
        d.route_by = {1: (key,)}
        d.rule = 'patterns'
        return d
    # actions.rules:33: rule everything_else
    m.append('everything_else')
    d.route = _K8
    d.rule = 'everything_else'
    return d
