// Zabbix webhook media type for incidentd (Zabbix 6.0+). Posts one native alert per event;
// the recovery of a problem resolves the same alert (same dedup_key: the problem's event id).
//
// Media type parameters (Administration > Media types > Create > Type: Webhook):
//   url        http://incidentd.example:9080        (incidentd's HTTP address)
//   source     zabbix-dc1                           (names this Zabbix in incidentd)
//   event_id   {EVENT.ID}
//   value      {EVENT.VALUE}                        (1 = problem, 0 = recovery)
//   nseverity  {EVENT.NSEVERITY}                    (0..5)
//   host       {HOST.NAME}
//   ip         {HOST.IP}
//   trigger    {TRIGGER.NAME}
//   summary    {TRIGGER.DESCRIPTION}
//   tags       {EVENT.TAGS}                         (tag:value,tag:value)
// Script: this file's contents. Then add the media to a user and an action.
var params = JSON.parse(value);
var severities = ['info', 'info', 'warning', 'minor', 'major', 'critical'];
var labels = { host_ip: params.ip || '', event_id: params.event_id };
(params.tags || '').split(',').forEach(function (pair) {
    var kv = pair.split(':');
    if (kv[0] && kv[0].trim()) {
        labels['tag.' + kv[0].trim()] = (kv.slice(1).join(':') || '').trim();
    }
});
var alert = {
    source: params.source || 'zabbix',
    name: params.trigger,
    ci: params.host,
    severity: severities[parseInt(params.nseverity, 10)] || 'warning',
    status: params.value === '0' ? 'resolved' : 'firing',
    summary: params.summary || params.trigger,
    labels: labels,
    dedup_key: 'zabbix-' + params.event_id
};
var request = new HttpRequest();
request.addHeader('Content-Type: application/json');
var response = request.post(params.url.replace(/\/$/, '') + '/api/v1/alerts', JSON.stringify(alert));
if (request.getStatus() !== 200) {
    throw 'incidentd answered ' + request.getStatus() + ': ' + response;
}
return 'OK';
