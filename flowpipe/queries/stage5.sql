-- flowpipe: stage=5 title="Stage 5: allow-all removed + explicit default-deny (final zero trust)"
--
-- Only allow-dns, allow-frontend-egress and allow-frontend-l7 remain: DNS works through the
-- proxy, GET /status/200 is answered 200 (egress allowed by allow-frontend-egress, ingress by
-- allow-frontend-l7), every other path gets 403 from the proxy (an L7 drop, reason
-- DROP_REASON_UNKNOWN), and egress to the internet is dropped with POLICY_DENIED.

-- rule: dns-allowed-by-allow-dns
-- why: DNS from shop must still be allowed by allow-dns after default-deny (nslookup backend.shop.svc.cluster.local answers)
-- expect: all
-- hubble prints ALLOWED for FORWARDED and REDIRECTED alike, and with an L7 DNS rule real
-- Cilium often reports REDIRECTED (to the DNS proxy): both are accepted.
-- assert: verdict IN ('FORWARDED', 'REDIRECTED')
-- assert: allowed_by(egress_allowed_by, 'allow-dns')
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND dst_port = 53 AND traffic_direction = 'EGRESS';

-- rule: backend-name-resolved
-- why: DNS must keep working under default-deny: backend.shop.svc.cluster.local answered through the DNS proxy
-- expect: at_least 1
SELECT * FROM l7_dns
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND l7_type = 'RESPONSE' AND verdict = 'FORWARDED'
  AND rtrim(dns_query, '.') = 'backend.shop.svc.cluster.local'
  AND dns_rcode = 0 AND len(dns_ips) > 0;

-- rule: status-200-forwarded
-- why: GET /status/200 must still pass under default-deny: forwarded by the proxy and answered HTTP 200
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: l7_type <> 'RESPONSE' OR http_code = 200
SELECT * FROM l7_http
WHERE src_namespace = 'shop' AND dst_namespace = 'shop'
  AND connects(src_labels, dst_labels, 'app=frontend', 'app=backend')
  AND http_method = 'GET' AND http_path = '/status/200';

-- rule: fe-be-egress-by-allow-frontend-egress
-- why: frontend->backend:80 must leave frontend allowed by allow-frontend-egress (policy-verdict:L3-L4 EGRESS ALLOWED)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(egress_allowed_by, 'allow-frontend-egress')
-- assert: policy_match = 'L3-L4'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'EGRESS';

-- rule: fe-be-ingress-by-allow-frontend-l7
-- why: frontend->backend:80 must enter backend only through allow-frontend-l7, redirected to the L7 proxy (L3-L4 INGRESS, verdict REDIRECTED)
-- expect: all
-- assert: verdict = 'REDIRECTED'
-- assert: allowed_by(ingress_allowed_by, 'allow-frontend-l7')
-- assert: policy_match = 'L3-L4'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'INGRESS';

-- rule: other-paths-denied
-- why: every request to backend other than GET /status/200 (e.g. GET /get) must be dropped by the L7 proxy with HTTP 403
-- expect: all
-- Requests only: a denied request has no backend response. The drop reason of L7 denials is
-- DROP_REASON_UNKNOWN (the guide's Grafana panel); a code, when Hubble records one, is 403.
-- Evidence is needed: send a request to another path (curl .../get) to prove the denial.
-- assert: verdict = 'DROPPED'
-- assert: drop_reason_desc = 'DROP_REASON_UNKNOWN'
-- assert: http_code IS NULL OR http_code = 403
SELECT * FROM l7_http
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND l7_type = 'REQUEST'
  AND NOT (http_method = 'GET' AND http_path = '/status/200');

-- rule: world-egress-denied
-- why: default-deny must drop egress from shop to the internet with POLICY_DENIED (curl https://example.com -> BLOCKED)
-- expect: at_least 1
SELECT * FROM drops
WHERE src_namespace = 'shop' AND is_world(dst_labels)
  AND drop_reason_desc = 'POLICY_DENIED';

-- rule: no-forwarded-to-world
-- why: no flow from shop may reach the internet under default-deny
-- expect: none
-- from-endpoint trace points are recorded before policy is enforced, so a packet seen there
-- can still be dropped: they are not evidence of a leak.
SELECT * FROM flows
WHERE src_namespace = 'shop' AND is_world(dst_labels)
  AND verdict IN ('FORWARDED', 'REDIRECTED')
  AND coalesce(trace_observation_point, '') <> 'FROM_ENDPOINT';

-- rule: no-allow-all
-- why: allow-all must be deleted in stage 5: while any flow of shop is allowed by it, default-deny changes nothing
-- expect: none
SELECT * FROM flows
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (allowed_by(ingress_allowed_by, 'allow-all') OR allowed_by(egress_allowed_by, 'allow-all'));

-- rule: no-l4-bypass
-- why: allow-frontend-to-backend must stay deleted: an L4 allow on backend:80 lets every path bypass the L7 rule
-- expect: none
SELECT * FROM flows
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (allowed_by(ingress_allowed_by, 'allow-frontend-to-backend')
    OR allowed_by(egress_allowed_by, 'allow-frontend-to-backend'));
