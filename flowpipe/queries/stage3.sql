-- flowpipe: stage=3 title="Stage 3: L4 least privilege (ingress + egress policy pair)"
--
-- allow-frontend-egress (frontend egress to backend:80) and allow-frontend-to-backend
-- (backend ingress from frontend:80) are more specific than allow-all, so Hubble names them
-- for frontend->backend:80 with match L3-L4. No L7 rule exists yet: verdicts are FORWARDED,
-- and HTTP is invisible to Hubble, so the backend's answer is proven at L4 (SYN-ACK).

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

-- rule: fe-be-ingress-by-allow-frontend-to-backend
-- why: frontend->backend:80 must enter backend allowed by allow-frontend-to-backend at L4 (policy-verdict:L3-L4 INGRESS ALLOWED, not redirected to a proxy)
-- expect: all
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(ingress_allowed_by, 'allow-frontend-to-backend')
-- assert: policy_match = 'L3-L4'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80 AND traffic_direction = 'INGRESS';

-- rule: backend-answered
-- why: the backend must answer frontend on port 80 (SYN-ACK replies forwarded): curl .../anything/ok gets HTTP 200
-- expect: at_least 1
-- Proven at L4 because this stage has no L7 visibility; is_reply is not required (it is
-- unknown on some trace points), the source port 80 and SYN+ACK identify the reply.
SELECT * FROM flows
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=backend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=frontend')
  AND src_port = 80 AND has_tcp_flags(tcp_flags, ['SYN', 'ACK'])
  AND verdict = 'FORWARDED';

-- rule: http-responses-2xx
-- why: if HTTP between frontend and backend is visible at all, the backend's answers must be 2xx (HTTP 200)
-- expect: all
-- min_flows: 0
-- assert: http_status_class(http_code) = '2xx'
SELECT * FROM l7_http
WHERE src_namespace = 'shop' AND dst_namespace = 'shop'
  AND connects(src_labels, dst_labels, 'app=frontend', 'app=backend')
  AND l7_type = 'RESPONSE';

-- rule: no-policy-drops-in-shop
-- why: allow-all is still in place, so no flow of shop may be dropped by policy (internet egress still works)
-- expect: none
SELECT * FROM drops
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (drop_reason_desc IN ('POLICY_DENIED', 'POLICY_DENY') OR event IN ('policy-verdict', 'l7'));
