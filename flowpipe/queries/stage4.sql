-- flowpipe: stage=4 title="Stage 4: L7 filtering (backend ingress only GET /status/200)"
--
-- allow-frontend-l7 adds an HTTP rule on backend:80, so ingress from frontend is redirected
-- to the proxy (policy verdict REDIRECTED, ingress_allowed_by allow-frontend-l7) and HTTP
-- becomes visible. allow-frontend-to-backend is deleted so nothing bypasses the L7 rule.
-- allow-all still exists until stage 5: other paths still pass (HTTP 500 from httpbin).

-- rule: fe-be-ingress-redirected-by-allow-frontend-l7
-- why: frontend->backend:80 must be redirected to the L7 proxy by allow-frontend-l7 (verdict=REDIRECTED ing=allow-frontend-l7)
-- expect: all
-- assert: verdict = 'REDIRECTED'
-- assert: allowed_by(ingress_allowed_by, 'allow-frontend-l7')
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'INGRESS';

-- rule: fe-be-egress-by-allow-frontend-egress
-- why: frontend->backend:80 must still leave frontend allowed by allow-frontend-egress from stage 3 (L3-L4 EGRESS ALLOWED)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(egress_allowed_by, 'allow-frontend-egress')
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'EGRESS';

-- rule: status-200-forwarded
-- why: GET /status/200 is what allow-frontend-l7 allows: the proxy must forward it and the backend answer 200
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: l7_type <> 'RESPONSE' OR http_code = 200
SELECT * FROM l7_http
WHERE src_namespace = 'shop' AND dst_namespace = 'shop'
  AND connects(src_labels, dst_labels, 'app=frontend', 'app=backend')
  AND http_method = 'GET' AND http_path = '/status/200';

-- rule: no-l4-bypass
-- why: allow-frontend-to-backend must be deleted in stage 4; while it exists every path reaches the backend at L4, bypassing the L7 rule
-- expect: none
SELECT * FROM flows
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (allowed_by(ingress_allowed_by, 'allow-frontend-to-backend')
    OR allowed_by(egress_allowed_by, 'allow-frontend-to-backend'));

-- rule: no-policy-drops-in-shop
-- why: allow-all still exists in stage 4, so other paths still pass (HTTP 500) and nothing is dropped; 403s belong to stage 5
-- expect: none
SELECT * FROM drops
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (drop_reason_desc IN ('POLICY_DENIED', 'POLICY_DENY') OR event IN ('policy-verdict', 'l7'));
